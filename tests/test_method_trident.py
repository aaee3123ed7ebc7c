"""Trident's pieces, each against a direct computation written out here, and its whole-image pass on tiny random
models (a small SAM built from segment_anything's classes, a timm ViT-Tiny in DINO's place)."""

from __future__ import annotations

import warnings

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from naclip import Segmenter
from naclip.cli import main
from naclip.methods import trident as tr
from naclip.preprocess import load_image
from naclip.reference import predict_plain
from naclip.sliding import stitch_features
from tests.conftest import VOC_IMAGE

SMALL = dict(model="naclip-tiny", pretrained=None, device="cpu", short_side=72, slide_crop=64, slide_stride=32)
# A random ViT-Tiny's patch features are nearly collinear: with beta 1.2 every similarity falls below beta x their
# mean, each row of the proxy attention is -inf throughout and the scores NaN (as in the authors' code); 0.5 is not.
BETA = 0.5


def tiny_sam(seed: int = 0) -> torch.nn.Module:
    """SAM's architecture at 128 x 128 input (8 x 8 grid), two blocks, the last with global attention."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    torch.manual_seed(seed)
    encoder = ImageEncoderViT(
        img_size=128, patch_size=16, embed_dim=32, depth=2, num_heads=2, out_chans=16, qkv_bias=True,
        use_rel_pos=True, window_size=4, global_attn_indexes=(1,),
    )  # fmt: skip
    prompt = PromptEncoder(embed_dim=16, image_embedding_size=(8, 8), input_image_size=(128, 128), mask_in_chans=4)
    transformer = TwoWayTransformer(depth=1, embedding_dim=16, mlp_dim=32, num_heads=2)
    decoder = MaskDecoder(transformer_dim=16, transformer=transformer, iou_head_depth=2, iou_head_hidden_dim=16)
    sam = Sam(encoder, prompt, decoder, pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375])
    return sam.eval()


@pytest.fixture
def tiny_models(monkeypatch):
    """The segmenter loads a tiny SAM and a ViT-Tiny (DINO's features function) in place of SAM and DINO ViT-B."""
    import timm

    import naclip.segmenter

    def load(model, weights, device, dtype, seed):
        torch.manual_seed(seed)
        if model.name == tr.SAM.name:
            return tiny_sam(seed)
        return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0).eval()

    monkeypatch.setattr(naclip.segmenter, "load_second_model", load)


def segmenter(benchmark=None, **overrides) -> Segmenter:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        classes = ["background, sky", "cat", "dog"]
        return Segmenter.for_benchmark(benchmark, "trident", classes, **SMALL, trident_beta=BETA, **overrides)


# -- sizes ---------------------------------------------------------------------------------------------------


def test_clip_size_rounds_as_their_preprocess_image():
    assert tr.clip_size(448, 597, 16, 336) == (464, 608)  # their example: 597 -> 608, 448 * 608 / 597 = 456.2 -> 464
    assert tr.clip_size(448, 592, 16, 336) == (448, 592)  # whole patches: kept
    longer = 1008  # 1000 rounded up
    short = int(200 * longer / 1000)  # 201 -> 208, below the window: 336
    assert tr.clip_size(200, 1000, 16, 336) == (336, longer) and short == 201
    assert tr.clip_size(1000, 200, 16, 100) == (1008, 208)


def test_sam_image_is_resized_up_to_whole_patches():
    image = np.random.default_rng(0).integers(0, 255, (37, 50, 3), dtype=np.uint8)
    rounded = tr.sam_image(image)
    assert rounded.shape == (48, 64, 3)
    np.testing.assert_array_equal(rounded, cv2.resize(image, (64, 48)))
    assert tr.sam_image(rounded) is rounded


# -- SAM guidance --------------------------------------------------------------------------------------------


def direct_guidance(attention, values, cos_fac, refine_neg_cos):
    """get_sam_sim written out per query token and head."""
    heads, hs, ws, dim = values.shape
    n = hs * ws
    v = values.reshape(heads, n, dim)
    out = torch.zeros(n, n)
    for i in range(n):
        cos = torch.stack(
            [torch.stack([F.cosine_similarity(v[h, i], v[h, j], dim=0) for j in range(n)]) for h in range(heads)]
        )
        tau = cos_fac * cos.mean()
        if not refine_neg_cos and tau < 0:
            tau = torch.tensor(0.6)
        tau = min(tau, torch.tensor(0.9))
        row = sum(torch.where(cos[h] > tau, attention[h, i], 0.0) for h in range(heads)) / heads
        out[i] = row / row.sum()
    return out


@pytest.mark.parametrize("cos_fac, refine_neg_cos", [(1.2, True), (0.0, True), (3.0, False), (-2.0, False)])
def test_guidance_weights_against_a_direct_computation(cos_fac, refine_neg_cos):
    torch.manual_seed(0)
    attention = torch.rand(3, 12, 12).softmax(-1)
    values = torch.randn(3, 3, 4, 5)
    values[..., 0] += 0.7  # positive mean cosine, so that large factors reach the 0.9 cap
    guide = tr.SamGuide(attention, values)
    ours = tr.guidance_weights(guide, cos_fac, refine_neg_cos)
    torch.testing.assert_close(ours, direct_guidance(attention, values, cos_fac, refine_neg_cos), rtol=0, atol=1e-6)
    torch.testing.assert_close(ours.sum(-1), torch.ones(12))


def test_sam_predictor_gives_the_packages_features_and_the_valid_attention():
    from segment_anything import SamPredictor

    sam = tiny_sam()
    image = np.random.default_rng(1).integers(0, 255, (48, 80, 3), dtype=np.uint8)
    predictor, guide = tr.sam_predictor(sam, image)
    reference = SamPredictor(sam)
    reference.set_image(image)  # the package's own path (long side 128 here, then padded)
    torch.testing.assert_close(predictor.features, reference.features, rtol=0, atol=1e-6)
    assert predictor.input_size == reference.input_size == (77, 128) and predictor.original_size == (48, 80)
    assert guide.grid == (77 // 16, 128 // 16)  # the valid grid: whole patches of the resized image
    # the last block's attention: softmax over the padded 8 x 8 grid, rows and columns cropped to the valid grid
    captured = {}
    block = sam.image_encoder.blocks[-1]
    handle = block.register_forward_pre_hook(lambda module, args: captured.update(x=args[0]))
    reference.set_image(image)
    handle.remove()
    x = block.norm1(captured["x"])  # (1, 8, 8, 32)
    qkv = block.attn.qkv(x).reshape(1, 64, 3, 2, 16).permute(2, 0, 3, 1, 4)[:, 0]  # (3, heads, 64, 16)
    from segment_anything.modeling.image_encoder import add_decomposed_rel_pos

    scores = add_decomposed_rel_pos(
        (qkv[0] * block.attn.scale) @ qkv[1].transpose(-2, -1), qkv[0], block.attn.rel_pos_h, block.attn.rel_pos_w,
        (8, 8), (8, 8),
    ).softmax(-1)  # fmt: skip
    valid = torch.tensor([r * 8 + c for r in range(4) for c in range(8)])
    torch.testing.assert_close(guide.attention, scores[:, valid][:, :, valid], rtol=0, atol=1e-6)
    torch.testing.assert_close(guide.values, qkv[2].reshape(2, 8, 8, 16)[:, :4], rtol=0, atol=1e-6)


# -- proxy attention and stitching ---------------------------------------------------------------------------


def test_proxy_weights_take_the_mean_over_all_windows():
    torch.manual_seed(2)
    features = torch.randn(3, 6, 2, 3) + torch.tensor([0.0, 0.0, 2.0])[:, None, None, None]  # windows differ
    beta, gamma = 1.2, 3.0
    unit = features.flatten(2) / features.flatten(2).norm(dim=1, keepdim=True)  # (n, D, N)
    sims = [unit[b].T @ unit[b] for b in range(3)]
    mean = torch.stack(sims).mean()  # one mean for all windows
    expected = []
    for sim in sims:
        s = (sim - beta * mean) * gamma
        s[s < 0] = float("-inf")
        expected.append(s.softmax(-1))
    ours = tr.proxy_weights(features, beta, gamma)
    torch.testing.assert_close(ours, torch.stack(expected), rtol=0, atol=1e-6)
    alone = torch.cat([tr.proxy_weights(features[b : b + 1], beta, gamma) for b in range(3)])
    assert not torch.allclose(alone, ours, atol=1e-3)  # a per-window mean is another computation


def test_stitch_features_is_the_per_window_average():
    torch.manual_seed(3)
    maps = torch.randn(4, 2, 3, 3)
    cells = [(0, 3, 0, 3), (0, 3, 2, 5), (1, 4, 0, 3), (1, 4, 2, 5)]
    ours = stitch_features(maps, cells, (4, 5))
    for y in range(4):
        for x in range(5):
            covering = [
                maps[i][:, y - y1, x - x1] for i, (y1, y2, x1, x2) in enumerate(cells) if y1 <= y < y2 and x1 <= x < x2
            ]
            torch.testing.assert_close(ours[:, y, x], sum(covering) / len(covering))


def test_guided_features_split_the_halves():
    torch.manual_seed(4)
    stitched = torch.randn(5, 4, 6)
    guides = [tr.SamGuide(torch.zeros(1, 6, 6), torch.zeros(1, 2, 3, 1)) for _ in range(2)]
    weights = [torch.rand(6, 6), torch.rand(6, 6)]
    ours = tr.guided_features(stitched, guides, weights)  # (2 * 6, 5) on a 2 x 6 grid
    halves = []
    for part, weight in zip((stitched[..., :3], stitched[..., 3:]), weights):
        resized = F.interpolate(part[None], size=(2, 3), mode="bilinear", align_corners=False)[0].reshape(5, 6)
        halves.append((weight @ resized.T).reshape(2, 3, 5))
    torch.testing.assert_close(ours, torch.cat(halves, dim=1).reshape(12, 5))


# -- refinement ----------------------------------------------------------------------------------------------


def test_class_regions_are_8_connected_with_boxes_and_best_points():
    labels = torch.zeros(10, 12, dtype=torch.long)
    labels[1:3, 1:3] = 1
    labels[3:5, 3:5] = 1  # touches the first block at a corner: one region with 8-connectivity
    labels[7:10, 8:12] = 1  # a second region
    labels[0, 11] = 1  # a single pixel, below the minimal area
    scores = torch.rand(3, 10, 12, generator=torch.Generator().manual_seed(5))
    scores[2] = 0.01  # never reaches coarse: no regions
    labels[5, 0] = 2
    regions = tr.class_regions(labels, scores, coarse=0.05, min_area=4)
    assert set(regions) == {0, 1}
    one = regions[1]
    assert one.masks.shape == (2, 10, 12) and [int(m.sum()) for m in one.masks] == [8, 12]
    torch.testing.assert_close(one.boxes, torch.tensor([[1.0, 1, 4, 4], [8, 7, 11, 9]]))
    for mask, point in zip(one.masks, one.points):
        masked = np.where(mask > 0, scores[1].numpy(), 0)
        y, x = np.unravel_index(masked.argmax(), masked.shape)
        assert point.tolist() == [x, y]


def test_mask_prompt_against_a_direct_computation():
    scores = torch.rand(30, 20, generator=torch.Generator().manual_seed(6))
    prompt = tr.mask_prompt(scores, (300, 200), coarse=0.4, coff=0.005)
    assert prompt.shape == (1, 256, 256)
    resized = F.interpolate(scores[None, None], size=(256, 171), mode="bilinear", align_corners=False)[0, 0]
    expected = torch.zeros(256, 256)
    expected[:, :171] = torch.where(resized > 0.4, 0.005 * resized, 0.0)
    torch.testing.assert_close(prompt[0], expected)


def test_sam_refinement_combines_masks_as_their_code(monkeypatch):
    """SAM's decoder answers with chosen masks: kept ones rescore their class, uncovered pixels keep their label,
    a failed region's pixels get their coarse scores back."""
    sam = tiny_sam()
    image = np.zeros((64, 96, 3), dtype=np.uint8)
    predictor, _ = tr.sam_predictor(sam, image)
    labels = torch.zeros(64, 96, dtype=torch.long)
    labels[:, 48:] = 1
    labels[40:, :30] = 2
    scores = torch.full((3, 64, 96), 0.1)
    scores[0, :, :48], scores[1, :, 48:], scores[2, 40:, :30] = 0.7, 0.8, 0.6
    size = predictor.input_size  # (85, 128): the image at SAM's long side, 128 here
    answers = {0: (0.9, (0, 16)), 1: (0.95, (16, 32)), 2: (0.5, (0, 32))}  # class -> (IoU, columns of the mask)
    calls = []

    def predict_torch(point_coords, point_labels, boxes, mask_input, multimask_output):
        c = [0, 1, 2][len(calls)]
        calls.append((c, boxes.clone(), point_coords.clone(), mask_input.clone()))
        iou, (left, right) = answers[c]
        low = torch.full((len(boxes), 1, 32, 32), -5.0)
        low[..., left:right] = 5.0
        return None, torch.full((len(boxes), 1), iou), low

    monkeypatch.setattr(predictor, "predict_torch", predict_torch)
    new_labels, refined = tr.sam_refinement(predictor, labels, scores, 0.2, 20, 0.005, 0.8)
    assert [c for c, *_ in calls] == [0, 1, 2]
    low = torch.full((2, 1, 32, 32), -5.0)
    low[0, ..., 0:16], low[1, ..., 16:32] = 5.0, 5.0
    logits = sam.postprocess_masks(low, size, (64, 96))[:, 0]  # the rounded size is the original here
    expected = torch.zeros(3, 64, 96)
    for row, c in enumerate((0, 1)):
        expected[c] = logits[row].sigmoid() * scores[c] * (logits[row] > 0)
    expected_labels = torch.where(expected.sum(0) == 0, labels, expected.argmax(0))
    failed = torch.zeros(64, 96)
    failed[40:64, :30] = 1  # class 2's region, at half resolution and back (nearest)
    expected = torch.maximum(failed * scores, expected)
    torch.testing.assert_close(refined, expected)
    assert torch.equal(new_labels, expected_labels)
    # the prompts: the box of class 1's region at half resolution, scaled to SAM's input (long side 128)
    _, boxes, points, prompt = calls[1]
    scale = torch.tensor([128 / 48, 85 / 32, 128 / 48, 85 / 32])  # half resolution (32 x 48) to (85 x 128)
    torch.testing.assert_close(boxes, torch.tensor([[24.0, 0, 47, 31]]) * scale)
    assert prompt.shape == (1, 32, 32)  # SAM's mask input (256 x 256 for ViT-B)


# -- the whole pass --------------------------------------------------------------------------------------------


@torch.no_grad()
def test_the_head_equals_its_steps_written_out(tiny_models):
    seg = segmenter("voc21", trident_sam_refine=False)
    image = load_image(VOC_IMAGE)[:150, :200]
    result = seg.predict(image)
    assert result.labels.shape == (150, 200) and result.probs.shape == (3, 150, 200)
    # the same, step by step
    enc = seg.encoder
    prepared = seg.prepare(image)  # (3, 72, 96): 96 is whole patches, 72 is not
    size = tr.clip_size(*prepared.shape[-2:], 16, 64)
    assert size == (80, 96)
    resized = F.interpolate(prepared[None], size=size, mode="bilinear", align_corners=False)[0]
    boxes = [(0, 64, 0, 64), (0, 64, 32, 96), (16, 80, 0, 64), (16, 80, 32, 96)]
    windows = torch.stack([resized[:, y1:y2, x1:x2] for y1, y2, x1, x2 in boxes])
    dino_spec, dino = seg.models["dino_vitb16"]
    proxy = tr.proxy_weights(dino_spec.features(dino, windows), BETA, 3.0)  # (4, 16, 16)
    values = enc.last_qkv(enc.run_trunk(windows)).v[:, :, 1:]
    attended = enc.visual.transformer.resblocks[-1].attn.out_proj((proxy[:, None] @ values).transpose(1, 2).flatten(2))
    maps = attended.transpose(1, 2).reshape(4, -1, 4, 4)
    stitched = stitch_features(maps, [(y1 // 16, y2 // 16, x1 // 16, x2 // 16) for y1, y2, x1, x2 in boxes], (5, 6))
    _, sam = seg.models["sam_vitb"]
    predictor, guide = tr.sam_predictor(sam, tr.sam_image(image))  # 150 x 200 -> 160 x 208 -> 98 x 128 -> 6 x 8
    assert guide.grid == (6, 8)
    weights = tr.guidance_weights(guide, 1.2, True)
    on_sam = F.interpolate(stitched[None], size=(6, 8), mode="bilinear", align_corners=False)[0].flatten(1).T
    features = F.normalize(enc.project((weights @ on_sam)[None], drop_cls=False)[0], dim=-1)
    logits = (features @ seg._query_features()[0].T).T.reshape(-1, 6, 8)  # noqa: SLF001
    logits = F.interpolate(logits[None], size=(150, 200), mode="bilinear", align_corners=False)[0]
    probs = (40 * logits).softmax(0)
    scores = torch.stack([probs[:2].max(0).values, probs[2], probs[3]])  # background: its two names
    labels = scores.argmax(0)
    labels[scores.max(0).values < 0.2] = 0
    np.testing.assert_allclose(result.probs, scores.numpy(), rtol=0, atol=1e-5)
    np.testing.assert_array_equal(result.labels, labels.numpy())


def test_refinement_halves_and_sweeps(tiny_models):
    seg = segmenter("cityscapes", trident_min_area=4, trident_iou_thresh=0.0)
    assert seg.settings.trident_sam_halves and seg.needs_original
    image = load_image(VOC_IMAGE)[:120, :200]
    plain, refined = seg.predict_variants(
        seg.prepare(image), (120, 200), [{"trident_sam_refine": False}, {}], original=image
    )
    assert plain.labels.shape == refined.labels.shape == (120, 200)
    assert (plain.labels != refined.labels).any() or not np.allclose(plain.probs, refined.probs)
    with pytest.raises(ValueError, match="reads the original image"):
        seg.predict_prepared(seg.prepare(image), (120, 200))
    plain_pipeline = predict_plain(seg, image)  # naclip.reference runs whole-image heads and their refinement
    np.testing.assert_array_equal(plain_pipeline.labels, refined.labels)
    np.testing.assert_allclose(plain_pipeline.probs, refined.probs, rtol=0, atol=1e-6)


def test_eval_and_segment_run_trident(tiny_models, tmp_path):
    model = ["--model", "naclip-tiny", "--pretrained", "none", "--device", "cpu", "--short-side", "64"]
    windows = ["--slide-crop", "64", "--slide-stride", "32", "--trident-beta", str(BETA)]
    out = tmp_path / "run"
    run = ["eval", "--benchmark", "voc21-sample", "--method", "trident", "--limit", "1", "--out", str(out)]
    assert main([*run, *model, *windows, "--no-progress", "--workers", "1"]) == 0
    segment = ["segment", str(VOC_IMAGE), "--classes", "cat; dog", "--method", "trident", "--out", str(tmp_path)]
    assert main([*segment, *model, *windows]) == 0 and (tmp_path / "sample_0000_labels.png").is_file()
