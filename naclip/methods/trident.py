"""Trident (Yu et al., ICCV 2025): CLIP, DINO and SAM together, one pass over the whole image.

As the authors' `Trident.get_trident_seg` (github:YuHengsss/Trident@a93b346, `trident.py:131-188`) computes it:

1. SAM ViT-B on the original image, resized up to whole 16-pixel patches (`trident.py:135-140`), through
   `SamPredictor`'s own preprocessing; the last block's attention probabilities and values, cropped to the
   valid grid (hs, ws) (`trident.py:112-128`). Cityscapes: the two halves separately (`:141-152`);
2. CLIP on the prepared image resized bilinearly to whole patches, at least the window on each side
   (`seg_utils/utils.py:9-25`), cut into windows, all encoded together;
3. DINO ViT-B/16's proxy attention replaces CLIP's last block (ProxyCLIP's, `open_clip/transformer.py:557-584`),
   with the mean similarity taken over all windows together;
4. the windows' attention outputs averaged into the whole-image CLIP grid, resized to the SAM grid and mixed by
   SAM's attention kept where SAM's values agree (`transformer.py:586-659`);
5. `ln_post`, `proj`, cosine to the queries on the SAM grid, resized straight to the original size
   (`trident.py:184-188`); then softmax, threshold and SAM's prompted refinement (`seg_utils/utils.py:92-197`).

What is reproduced as their code computes it, and what is not: docs/methods/trident.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from naclip.heads import ImageInput, register_head
from naclip.methods.registry import Method, Protocol, register_method
from naclip.settings import Params, Settings, option, positive
from naclip.sliding import crop_windows, stitch_features, window_boxes
from naclip.vfm import sam_features, vfm

SAM_STRIDE = 16  # the SAM input is rounded up to multiples of 16 and its grid read at 16 pixels (trident.py:135-154)
DOWN_RATIO = 2  # the refinement finds regions at half resolution (seg_utils/utils.py:107)
NEGATIVE_THRESHOLD = 0.6  # a negative similarity threshold becomes this without refine_neg_cos (transformer.py:655)
MAX_THRESHOLD = 0.9  # the similarity threshold is capped here (transformer.py:657)

DINO = vfm("dino_vitb16")
SAM = vfm("sam_vitb", full=True)


@dataclass(frozen=True)
class TridentParams(Params):
    """Trident's own parameters (`configs/base_config.py:11-21`, `trident.py:29-33`)."""

    trident_beta: float = option(1.2, "method", "Trident: DINO similarities below beta x their mean are masked out")
    trident_gamma: float = option(3.0, "method", "Trident: scale of the DINO similarities before the softmax", positive)
    trident_cos_fac: float = option(
        1.2, "method", "Trident: SAM attention kept where SAM's value cosine exceeds cos_fac x its row mean"
    )
    trident_refine_neg_cos: bool = option(
        True, "method", "Trident: keep a negative SAM cosine threshold (false: it becomes 0.6)"
    )
    trident_sam_halves: bool = option(
        False, "method", "Trident: SAM sees the left and right halves of the image separately (their Cityscapes)"
    )
    trident_sam_refine: bool = option(True, "method", "Trident: refine the labels with SAM's prompted masks")
    trident_coarse_thresh: float = option(
        0.2, "method", "Trident: refinement ignores pixels whose top probability is below this", lambda v: 0 <= v <= 1
    )
    trident_min_area: int = option(
        225, "method", "Trident: smallest region (pixels at half resolution) that prompts SAM", lambda v: v >= 0
    )
    trident_mask_coff: float = option(0.005, "method", "Trident: scale of the probabilities given as SAM's mask prompt")
    trident_iou_thresh: float = option(
        0.8, "method", "Trident: SAM masks with a predicted IoU above this replace their region", lambda v: 0 <= v <= 1
    )


# -- sizes -------------------------------------------------------------------------------------------------


def clip_size(height: int, width: int, stride: int, crop: int) -> tuple[int, int]:
    """The size CLIP's whole image is resized to (`preprocess_image`, seg_utils/utils.py:9-25).

    Kept when both sides are multiples of `stride`; else the long side is rounded up to one, the short side
    scaled with it (truncated) and rounded up, each side at least `crop`: 448 x 597 -> 464 x 608.
    """
    if height % stride == 0 and width % stride == 0:
        return height, width
    longer = max(height, width)
    target = -(-longer // stride) * stride
    sides = (int(height * target / longer), int(width * target / longer))
    return tuple(max(-(-side // stride) * stride, crop) for side in sides)


def sam_image(original: np.ndarray, stride: int = SAM_STRIDE) -> np.ndarray:
    """The original (H, W, 3) uint8 image resized (OpenCV, bilinear) up to multiples of `stride`
    (trident.py:135-140)."""
    height, width = (-(-side // stride) * stride for side in original.shape[:2])
    if (height, width) == original.shape[:2]:
        return original
    return cv2.resize(original, (width, height))


# -- SAM ---------------------------------------------------------------------------------------------------


@dataclass
class SamGuide:
    """SAM's last-block attention and values on the valid part of its grid, for one image (or half)."""

    attention: Tensor  # (heads, hs*ws, hs*ws) probabilities, cropped (softmax over the padded grid first)
    values: Tensor  # (heads, hs, ws, head_dim)

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.values.shape[1:3])


def sam_predictor(module: nn.Module, image: np.ndarray):
    """A `SamPredictor` set on `image` (H, W, 3) uint8 RGB with its own preprocessing (long side 1024, padded),
    and the last block's `SamGuide` (`get_sam_feat`, trident.py:112-128)."""
    from segment_anything import SamPredictor

    predictor = SamPredictor(module)
    resized = predictor.transform.apply_image(image)  # PIL bilinear to long side 1024
    pixels = torch.as_tensor(resized, device=predictor.device).permute(2, 0, 1).contiguous()[None]
    features = sam_features(module, module.preprocess(pixels.to(module.pixel_mean.dtype)))
    predictor.original_size, predictor.input_size = image.shape[:2], tuple(pixels.shape[-2:])
    predictor.features, predictor.is_image_set = features.patches, True
    hs, ws = (side // SAM_STRIDE for side in predictor.input_size)
    grid = features.grid
    attention = features.attention()[0].unflatten(1, grid).unflatten(-1, grid)  # (heads, h, w, h, w)
    attention = attention[:, :hs, :ws, :hs, :ws].flatten(1, 2).flatten(-2)  # (heads, hs*ws, hs*ws)
    values = features.qkv.v[0].unflatten(1, grid)[:, :hs, :ws]  # (heads, hs, ws, head_dim)
    return predictor, SamGuide(attention, values)


def guidance_weights(guide: SamGuide, cos_fac: float, refine_neg_cos: bool) -> Tensor:
    """(N, N) row-normalised weights on the SAM grid (`get_sam_sim`, transformer.py:644-659).

    Per head, SAM's attention is kept where the cosine of the two tokens' values exceeds tau, tau = cos_fac x
    the query token's mean cosine over heads and keys (0.6 if negative and not `refine_neg_cos`), at most 0.9;
    then averaged over heads and each row divided by its sum.
    """
    values = F.normalize(guide.values.flatten(1, 2), dim=-1)  # (heads, N, head_dim)
    cosine = values @ values.transpose(-2, -1)  # (heads, N, N)
    tau = cos_fac * cosine.mean(0, keepdim=True).mean(-1, keepdim=True)  # (1, N, 1)
    if not refine_neg_cos:
        tau = torch.where(tau < 0, NEGATIVE_THRESHOLD, tau)
    tau = torch.where(tau > MAX_THRESHOLD, MAX_THRESHOLD, tau)
    kept = torch.where(cosine > tau, guide.attention, torch.zeros_like(guide.attention)).mean(0)  # (N, N)
    return kept / kept.sum(-1, keepdim=True)


# -- CLIP with DINO's proxy attention -------------------------------------------------------------------------


def proxy_weights(features: Tensor, beta: float, gamma: float) -> Tensor:
    """(n, N, N) proxy attention from second-model patch features (n, D, h, w) of n windows (transformer.py:566-575):
    softmax of gamma (S - beta mean(S)), S the cosine similarities, -inf where negative; the mean is over all
    windows together."""
    unit = F.normalize(features.flatten(2), dim=1)  # (n, D, N)
    similarity = unit.transpose(1, 2) @ unit  # (n, N, N)
    similarity = (similarity - similarity.mean() * beta) * gamma
    return similarity.masked_fill(similarity < 0, float("-inf")).softmax(-1)


def guided_features(stitched: Tensor, guides: list[SamGuide], weights: list[Tensor]) -> Tensor:
    """(hs*ws, D) features on the SAM grid: the stitched CLIP-grid features (D, H, W) resized bilinearly to each
    SAM grid and mixed by its weights; with two guides (the halves) the left and right halves of the features,
    side by side (transformer.py:619-640)."""
    half = stitched.shape[-1] // 2
    parts = (stitched[..., :half], stitched[..., half:]) if len(guides) > 1 else (stitched,)
    outputs = []
    for part, guide, weight in zip(parts, guides, weights, strict=True):
        resized = F.interpolate(part[None], size=guide.grid, mode="bilinear", align_corners=False)[0]  # (D, hs, ws)
        mixed = weight.to(resized.dtype) @ resized.flatten(1).T  # (hs*ws, D)
        outputs.append(mixed.unflatten(0, guide.grid))  # (hs, ws, D)
    return torch.cat(outputs, dim=1).flatten(0, 1)  # (hs * sum(ws), D)


def _sam_state(inputs: ImageInput, settings: Settings):
    """The SAM predictor on the whole (rounded) image and the guides (one, or one per half), once per image."""

    def compute():
        _, module = inputs.models[SAM.name]
        image = sam_image(inputs.original)
        if not settings.trident_sam_halves:
            predictor, guide = sam_predictor(module, image)
            return predictor, [guide]
        width = image.shape[1]
        guides = [sam_predictor(module, part)[1] for part in (image[:, : width // 2], image[:, width // 2 :])]
        predictor = sam_predictor(module, image)[0] if settings.trident_sam_refine else None
        return predictor, guides

    key = ("trident-sam", settings.trident_sam_halves, settings.trident_sam_refine and settings.trident_sam_halves)
    if key not in inputs.kept:
        inputs.kept[key] = compute()
    return inputs.kept[key]


def _windows_state(inputs: ImageInput, settings: Settings):
    """CLIP's windows of the resized image, their trunk, DINO's features and the window cells, once per image."""

    def compute():
        encoder = inputs.encoder
        patch = encoder.patch_size[0]
        crop, stride = settings.slide_crop, settings.slide_stride
        height, width = inputs.image.shape[-2:]
        size = clip_size(height, width, patch, crop)
        image = inputs.image
        if size != (height, width):
            image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
        boxes = window_boxes(*size, crop, stride) if crop > 0 else [(0, size[0], 0, size[1])]
        if any(side % patch for box in boxes for side in box):
            raise ValueError(f"Trident's windows must be whole {patch}-pixel patches; got slide_crop={crop}")
        windows = crop_windows(image, boxes)  # (n, 3, crop, crop)
        spec, module = inputs.models[DINO.name]
        return encoder.run_trunk(windows), spec.features(module, windows), boxes, encoder.grid(*size)

    key = ("trident-windows", settings.slide_crop, settings.slide_stride)
    if key not in inputs.kept:
        inputs.kept[key] = compute()
    return inputs.kept[key]


# -- SAM refinement ---------------------------------------------------------------------------------------------


@dataclass
class Regions:
    """One class's connected regions at half resolution, each with its box and its best pixel."""

    masks: np.ndarray  # (k, h, w) uint8
    boxes: Tensor  # (k, 4) x1, y1, x2, y2 (inclusive), as torchvision's masks_to_boxes
    points: Tensor  # (k, 2) x, y of the region's highest probability


def class_regions(labels: Tensor, scores: Tensor, coarse: float, min_area: int) -> dict[int, Regions]:
    """Per class c of scores (C, h, w) whose top score reaches `coarse`: the 8-connected regions of `labels` == c
    (h, w) of at least `min_area` pixels (`split_connected_regions`, seg_utils/utils.py:27-69)."""
    from skimage import measure
    from torchvision.ops import masks_to_boxes

    found = {}
    for c in range(len(scores)):
        if scores[c].max() < coarse:
            continue
        labelled = measure.label((labels == c).cpu().numpy().astype(np.float32), connectivity=2)
        masks, points = [], []
        for region in range(1, labelled.max() + 1):
            mask = (labelled == region).astype(np.uint8)
            if mask.sum() < min_area:
                continue
            best = int(torch.argmax(scores[c] * torch.from_numpy(mask).to(scores.device)))
            points.append(torch.tensor([best % scores.shape[-1], best // scores.shape[-1]]))
            masks.append(mask)
        if masks:
            stacked = np.stack(masks)
            found[c] = Regions(stacked, masks_to_boxes(torch.from_numpy(stacked)), torch.stack(points))
    return found


def mask_prompt(scores: Tensor, size: tuple[int, int], coarse: float, coff: float, side: int = 256) -> Tensor:
    """(1, side, side) SAM mask prompt from one class's scores (h, w): resized as an image of `size` (H, W) with
    long side `side` (SAM's mask input, 256: their literal), zero-padded, `coff` x the score where above
    `coarse`, else 0 (seg_utils/utils.py:140-146)."""
    from segment_anything.utils.transforms import ResizeLongestSide

    height, width = ResizeLongestSide.get_preprocess_shape(*size, side)
    prompt = F.interpolate(scores[None, None], size=(height, width), mode="bilinear", align_corners=False)[0]
    prompt = F.pad(prompt, (0, side - width, 0, side - height))
    return torch.where(prompt > coarse, coff * prompt, torch.zeros_like(prompt)).float()


def sam_refinement(
    predictor, labels: Tensor, scores: Tensor, coarse: float, min_area: int, coff: float, iou_thresh: float
) -> tuple[Tensor, Tensor]:
    """Labels (H, W) and class scores (C, H, W) refined with SAM's prompted masks (`sam_refinement`,
    seg_utils/utils.py:92-197), SAM set on the image rounded to 16 pixels (`predictor`).

    Regions of each class at half resolution (below `coarse`: no class) prompt SAM's decoder with their box,
    their best pixel and the class's scores as a mask; masks whose predicted IoU exceeds `iou_thresh` score
    sigmoid(mask logit) x the class score inside the mask and 0 elsewhere; a pixel takes the best of these, or
    keeps its label where none covers it. Pixels of failed regions get at least their coarse scores; their label
    stays the refined one, as their code compares after raising the scores (`map_failed_regions`).
    """
    num_classes, (height, width) = len(scores), labels.shape
    down = (height // DOWN_RATIO, width // DOWN_RATIO)
    labels_down = F.interpolate(labels[None, None].float(), size=down, mode="nearest")[0, 0].long()
    scores_down = F.interpolate(scores[None].float(), size=down, mode="bilinear", align_corners=False)[0]
    if coarse > 0:
        labels_down[scores_down.max(0).values < coarse] = num_classes  # no class: never split
    regions = class_regions(labels_down, scores_down, coarse, min_area)
    model, transform, device = predictor.model, predictor.transform, predictor.device
    side = model.prompt_encoder.mask_input_size[0]
    model.prompt_encoder.float()  # the authors' prompt encoder and decoder run in float32 (trident.py:88-89)
    model.mask_decoder.float()
    predictor.features = predictor.features.float()
    kept, failed = [], []  # (class, low-resolution logits of its kept masks); failed region masks
    for c, found in regions.items():
        boxes = transform.apply_boxes_torch(found.boxes.long(), down).float().to(device)
        points = transform.apply_coords_torch(found.points.long(), down)[:, None].float().to(device)  # (k, 1, 2)
        _, iou, low = predictor.predict_torch(
            point_coords=points,
            point_labels=torch.ones(len(points), 1, device=device),
            boxes=boxes,
            mask_input=mask_prompt(scores_down[c], (height, width), coarse, coff, side).to(device),
            multimask_output=False,
        )
        valid = (iou > iou_thresh)[:, 0].cpu()
        if not valid.all():
            failed.append(found.masks[~valid.numpy()])
        if valid.any():
            kept.append((c, low[valid.to(device)]))
    if not kept:
        return labels, scores
    low = torch.cat([logits for _, logits in kept])  # (k, 1, 256, 256)
    logits = model.postprocess_masks(low, predictor.input_size, predictor.original_size)  # (k, 1, H', W')
    if tuple(logits.shape[-2:]) != (height, width):  # the original, not the rounded size
        logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
    masks, probabilities = logits[:, 0] > model.mask_threshold, logits[:, 0].sigmoid()
    refined = torch.zeros(num_classes, height, width, device=scores.device)
    start = 0
    for c, class_logits in kept:
        stop = start + len(class_logits)
        covered = masks[start:stop].any(0)
        refined[c] = (probabilities[start:stop] * scores[c]).max(0).values * covered
        start = stop
    new_labels = torch.where(refined.sum(0) == 0, labels, refined.argmax(0))
    if failed:
        union = torch.from_numpy(np.concatenate(failed).any(0)).to(scores.device)  # (h, w)
        union = F.interpolate(union[None, None].float(), size=(height, width), mode="nearest")[0]  # (1, H, W)
        refined = torch.maximum(union * scores, refined)
    return new_labels, refined


def relabel(inputs: ImageInput, settings: Settings, labels: Tensor, scores: Tensor) -> tuple[Tensor, Tensor]:
    """The refinement step of the head: SAM's prompted masks over the thresholded labels (`--sam_refine`)."""
    if not settings.trident_sam_refine:
        return labels, scores
    predictor, _ = _sam_state(inputs, settings)
    return sam_refinement(
        predictor,
        labels,
        scores,
        settings.trident_coarse_thresh,
        settings.trident_min_area,
        settings.trident_mask_coff,
        settings.trident_iou_thresh,
    )


@register_head("trident", params=TridentParams, models=(DINO, SAM), whole_image=True, original=True, relabel=relabel)
@torch.no_grad()
def trident_head(inputs: ImageInput, settings: Settings) -> Tensor:
    """Trident's cosine logits (Q, H, W) at the original size (see the module)."""
    encoder = inputs.encoder
    trunk, dino, boxes, grid = _windows_state(inputs, settings)
    patch = encoder.patch_size[0]
    window_grid = encoder.grid(boxes[0][1] - boxes[0][0], boxes[0][3] - boxes[0][2])
    values = encoder.last_qkv(trunk).v[:, :, 1:]  # (n, heads, h*w, head_dim), [CLS] dropped
    if tuple(dino.shape[-2:]) != window_grid:  # DINO B/16 and a /16 CLIP: their values are never resized
        raise ValueError(f"Trident needs DINO's patch grid {tuple(dino.shape[-2:])} to be CLIP's {window_grid}")
    weights = proxy_weights(dino.float(), settings.trident_beta, settings.trident_gamma).to(values.dtype)
    attended = encoder.attend(weights[:, None], values)  # (n, h*w, width), out-projected
    maps = attended.transpose(1, 2).unflatten(2, window_grid)  # (n, width, h, w)
    cells = [(y1 // patch, y2 // patch, x1 // patch, x2 // patch) for y1, y2, x1, x2 in boxes]
    stitched = stitch_features(maps, cells, grid)  # (width, H, W) on the whole image's CLIP grid
    predictor, guides = _sam_state(inputs, settings)
    mix = [guidance_weights(g, settings.trident_cos_fac, settings.trident_refine_neg_cos) for g in guides]
    features = guided_features(stitched, guides, mix)  # (hs*ws, width)
    features = F.normalize(encoder.project(features[None], drop_cls=False)[0].to(inputs.queries.dtype), dim=-1)
    sam_grid = (guides[0].grid[0], sum(g.grid[1] for g in guides))
    logits = (features @ inputs.queries.T).T.unflatten(1, sam_grid)  # (Q, hs, ws)
    return F.interpolate(logits[None], size=inputs.size, mode="bilinear", align_corners=False)[0]


@register_method
def trident() -> Method:
    """Trident as its authors ran it (github:YuHengsss/Trident@a93b346, `dist_test.sh`: with `--sam_refine`)."""
    return Method(
        "trident",
        "Trident (DINO proxy attention over all windows, features stitched and guided by SAM, SAM refinement)",
        dict(
            short_side=448,
            slide_crop=336,
            slide_stride=224,
            logit_scale=40.0,
            prob_threshold=0.0,
            area_threshold=0.0,
            pad_windows=False,
            pamr_steps=0,
            renormalise=False,
        ),
        {
            "voc21": Protocol(
                {"short_side": 448, "prob_threshold": 0.2, "trident_coarse_thresh": 0.2},
                class_file="proxyclip/voc21.txt",
                source="configs/cfg_voc21.py:6-7,16",
            ),
            "voc20": Protocol(
                {"short_side": 336, "slide_stride": 112, "trident_coarse_thresh": 0.2, "trident_cos_fac": 0.0},
                class_file="clearclip/voc20.txt",
                source="configs/cfg_voc20.py:6-8,17",
            ),
            "context60": Protocol(
                {"short_side": 576, "prob_threshold": 0.15, "trident_coarse_thresh": 0.15},
                source="configs/cfg_context60.py:6-7,16",
            ),
            "context59": Protocol(
                {"short_side": 576, "trident_coarse_thresh": 0.15}, source="configs/cfg_context59.py:6,15"
            ),
            "coco_object": Protocol(
                {"short_side": 448, "prob_threshold": 0.25, "trident_coarse_thresh": 0.25},
                class_file="proxyclip/coco_object.txt",
                source="configs/cfg_coco_object.py:6-7,16",
            ),
            "coco_stuff": Protocol(
                {"short_side": 448, "trident_coarse_thresh": 0.05}, source="configs/cfg_coco_stuff164k.py:6,15"
            ),
            "cityscapes": Protocol(
                {
                    "short_side": 688,
                    "trident_coarse_thresh": 0.1,
                    "trident_cos_fac": 3.0,
                    "trident_refine_neg_cos": False,
                    "trident_sam_halves": True,
                },
                source="configs/cfg_city_scapes.py:5-9,18",
            ),
            "ade20k": Protocol(
                {"short_side": 576, "trident_coarse_thresh": 0.05, "trident_refine_neg_cos": False},
                source="configs/cfg_ade20k.py:6-7,16",
            ),
        },
        source="github:YuHengsss/Trident@a93b346",
        note="336/224 windows (Context and ADE20K at 576, Cityscapes at 688 with SAM on each half), SAM refinement.",
        head="trident",
        docs="docs/methods/trident.md",
    )
