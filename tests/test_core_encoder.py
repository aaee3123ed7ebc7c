"""Dense features: the trunk, the replaced last block, position interpolation."""

from __future__ import annotations

import copy
import inspect

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from open_clip.transformer import VisionTransformer
from torch import nn

from naclip.encoder import DenseEncoder, Taps, Trunk, interpolate_positions


@pytest.fixture
def encoder(tiny):
    return tiny().encoder


def test_vanilla_block_matches_open_clip_forward(encoder):
    """vanilla attention + vanilla architecture is CLIP as trained: open_clip's own token outputs."""
    images = torch.randn(2, 3, 224, 224)
    visual = encoder.visual
    visual.output_tokens = True
    try:
        _, tokens = visual(images)
    finally:
        visual.output_tokens = False
    ours = encoder.features(images, "vanilla", "vanilla", 5.0)
    assert ours.shape == (2, 196, 32)
    torch.testing.assert_close(ours, tokens @ visual.proj, rtol=1e-5, atol=1e-5)


def test_reduced_block_is_attention_only(encoder):
    """reduced: ln_post(out_proj(attention(ln_1(x)))) @ proj, with nothing of the FFN or residual."""
    images = torch.randn(1, 3, 224, 224)
    tokens = encoder.trunk(images)
    block = encoder.visual.transformer.resblocks[-1]
    x = block.ln_1(tokens)
    if not block.attn.batch_first:  # older open_clip: (T, B, D)
        x = x.transpose(0, 1)
    expected, _ = block.attn(x, x, x, need_weights=False)  # vanilla attention through torch's own module
    if not block.attn.batch_first:
        expected = expected.transpose(0, 1)
    expected = encoder.visual.ln_post(expected) @ encoder.visual.proj
    torch.testing.assert_close(encoder.last_block(Trunk(tokens), (14, 14), "vanilla", "reduced", 5.0), expected[:, 1:])


def test_reduced_ignores_ffn_weights_vanilla_does_not(encoder):
    images = torch.randn(1, 3, 224, 224)
    before = {arch: encoder.features(images, "naclip", arch, 5.0) for arch in ("reduced", "vanilla")}
    block = encoder.visual.transformer.resblocks[-1]
    with torch.no_grad():
        for p in [*block.mlp.parameters(), *block.ln_2.parameters()]:
            p.add_(torch.randn_like(p))
    torch.testing.assert_close(encoder.features(images, "naclip", "reduced", 5.0), before["reduced"])
    assert not torch.allclose(encoder.features(images, "naclip", "vanilla", 5.0), before["vanilla"])


def test_features_for_non_square_inputs(encoder):
    features = encoder.features(torch.randn(1, 3, 336, 512), "naclip", "reduced", 5.0)
    assert features.shape == (1, 21 * 32, 32)
    assert torch.isfinite(features).all()


def test_partial_border_patches_are_dropped(encoder):
    assert encoder.grid(336, 500) == (21, 31)
    assert encoder.features(torch.randn(1, 3, 336, 500), "kk", "reduced", 5.0).shape == (1, 21 * 31, 32)


def test_position_interpolation_keeps_native_grid_and_cls():
    positions = torch.randn(1 + 14 * 14, 8)
    assert interpolate_positions(positions, (14, 14), (14, 14)) is positions
    resized = interpolate_positions(positions, (14, 14), (21, 32))
    assert resized.shape == (1 + 21 * 32, 8)
    assert torch.equal(resized[0], positions[0])


def test_position_interpolation_preserves_smooth_fields():
    """Bicubic resizing keeps a constant field constant and a ramp monotone, in the right orientation."""
    rows = torch.arange(14.0).repeat_interleave(14)
    positions = torch.stack([torch.full((196,), 0.5), rows], dim=1)
    positions = torch.cat([torch.zeros(1, 2), positions])
    resized = interpolate_positions(positions, (14, 14), (21, 7))[1:].reshape(21, 7, 2)
    torch.testing.assert_close(resized[..., 0], torch.full((21, 7), 0.5))
    ramp = resized[..., 1]
    assert torch.all(ramp[1:] >= ramp[:-1] - 1e-4) and torch.allclose(ramp[:, 0], ramp[:, -1])


def test_position_interpolation_follows_reference_scale_convention():
    """Sample positions follow the (g + 0.1) / n scale factor, not g / n."""
    positions = torch.cat([torch.zeros(1, 1), torch.arange(196.0).reshape(196, 1)])
    ours = interpolate_positions(positions, (14, 14), (28, 28))[1:].reshape(1, 1, 28, 28)
    grid = positions[1:].reshape(1, 14, 14, 1).permute(0, 3, 1, 2)
    by_size = F.interpolate(grid, size=(28, 28), mode="bicubic", align_corners=False)
    by_factor = F.interpolate(grid, scale_factor=28.1 / 14, mode="bicubic", recompute_scale_factor=False)
    torch.testing.assert_close(ours, by_factor)
    assert not torch.allclose(ours, by_size)


VARIANTS = [("vanilla", "vanilla"), ("naclip", "reduced"), ("kk", "vanilla")]


class PackedAttention(nn.Module):
    """An attention module that is not nn.MultiheadAttention (as open_clip's own `Attention`), same layout."""

    def __init__(self, mha: nn.MultiheadAttention):
        super().__init__()
        self.num_heads, self.batch_first = mha.num_heads, mha.batch_first
        self.in_proj_weight, self.in_proj_bias, self.out_proj = mha.in_proj_weight, mha.in_proj_bias, mha.out_proj

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x if self.batch_first else x.transpose(0, 1)
        batch, tokens, width = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias).reshape(batch, tokens, 3, self.num_heads, -1)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        out = self.out_proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, tokens, width))
        return out if self.batch_first else out.transpose(0, 1)


class PackedBlock(nn.Module):
    """A residual block calling its attention module as open_clip's custom blocks do."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.ln_1, self.ls_1, self.ln_2, self.mlp, self.ls_2 = block.ln_1, block.ls_1, block.ln_2, block.mlp, block.ls_2
        self.attn = PackedAttention(block.attn)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.ls_1(self.attn(self.ln_1(x), attn_mask=attn_mask))
        return x + self.ls_2(self.mlp(self.ln_2(x)))


def _features(encoder, images):
    return {variant: encoder.features(images, *variant, 5.0) for variant in VARIANTS}


def test_attention_modules_other_than_multihead_attention(encoder):
    """Any packed q/k/v attention (in_proj_weight, in_proj_bias, out_proj, num_heads) gives the same features."""
    images = torch.randn(2, 3, 224, 224)
    expected = _features(encoder, images)
    visual = copy.deepcopy(encoder.visual)
    visual.transformer.resblocks = nn.ModuleList(PackedBlock(block) for block in visual.transformer.resblocks)
    packed = DenseEncoder(visual)
    for variant, features in _features(packed, images).items():
        torch.testing.assert_close(features, expected[variant], rtol=1e-5, atol=1e-5)
    visual.output_tokens = True
    _, tokens = visual(images)
    torch.testing.assert_close(expected["vanilla", "vanilla"], tokens @ visual.proj, rtol=1e-5, atol=1e-5)


def test_trunk_follows_the_transformers_token_layout(encoder):
    """Blocks run on (T, B, D) when the transformer says batch_first=False, or has no such flag (older open_clip)."""
    images = torch.randn(2, 3, 224, 224)
    expected = _features(encoder, images)
    visual = copy.deepcopy(encoder.visual)
    for block in visual.transformer.resblocks:
        block.attn.batch_first = False
    for layout in ("flag", "no flag"):
        if layout == "flag":
            visual.transformer.batch_first = False
        else:
            del visual.transformer.batch_first
        for variant, features in _features(DenseEncoder(visual), images).items():
            torch.testing.assert_close(features, expected[variant], rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(
    "block_type" not in inspect.signature(VisionTransformer).parameters,
    reason="this open_clip has no custom attention blocks in its ViT",
)
def test_open_clip_custom_attention_blocks():
    """open_clip's own `Attention` module (custom blocks) with the weights of a standard tower."""
    torch.manual_seed(0)
    config = dict(image_size=224, patch_size=16, width=64, layers=3, heads=4, mlp_ratio=4.0, output_dim=32)
    standard = VisionTransformer(**config).eval()
    custom = VisionTransformer(**config, block_type="custom").eval()
    custom.load_state_dict(standard.state_dict())
    assert not isinstance(custom.transformer.resblocks[-1].attn, nn.MultiheadAttention)
    images = torch.randn(1, 3, 224, 224)
    expected = _features(DenseEncoder(standard), images)
    for variant, features in _features(DenseEncoder(custom), images).items():
        torch.testing.assert_close(features, expected[variant], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="attention uses logit_scale.*expected plain scaled dot-product"):
        DenseEncoder(VisionTransformer(**config, scaled_cosine_attn=True))


def test_attention_without_packed_projections_is_refused(encoder):
    visual = copy.deepcopy(encoder.visual)
    visual.transformer.resblocks[-1].attn = nn.Linear(64, 64)
    with pytest.raises(
        ValueError, match=r"attention \(Linear\) has no packed q/k/v projection.*out_proj and num_heads"
    ):
        DenseEncoder(visual)
    visual.transformer.resblocks[-1].attn = nn.MultiheadAttention(64, 4, kdim=32, vdim=32)
    with pytest.raises(ValueError, match=r"\(MultiheadAttention\) has no packed q/k/v projection"):
        DenseEncoder(visual)


def test_trunk_taps_keep_layers_and_attention_without_changing_the_tokens(encoder):
    """Tapped blocks are restated step by step: same tokens, and the attention weights CLIP computes."""
    images = torch.randn(2, 3, 64, 80)
    plain = encoder.trunk(images)
    tapped = encoder.run_trunk(images, Taps(layers=frozenset({0, 1}), attention=frozenset({0, 1})))
    torch.testing.assert_close(tapped.tokens, plain, rtol=1e-5, atol=1e-5)
    assert set(tapped.layers) == {0, 1} and set(tapped.attention) == {0, 1}
    blocks = encoder.visual.transformer.resblocks
    x = encoder.run_trunk(images, Taps(layers=frozenset({0}))).layers[0]
    torch.testing.assert_close(tapped.layers[0], x, rtol=1e-5, atol=1e-5)
    # block 1's attention weights straight from torch's own module on block 0's output
    y = blocks[1].ln_1(x)
    _, expected = blocks[1].attn(y, y, y, need_weights=True, average_attn_weights=False)
    torch.testing.assert_close(tapped.attention[1], expected, rtol=1e-5, atol=1e-6)
    assert tapped.attention[1].shape == (2, blocks[1].attn.num_heads, 1 + 4 * 5, 1 + 4 * 5)
    assert encoder.run_trunk(images).layers == {} and encoder.run_trunk(images).attention == {}


def test_a_new_head_declares_its_taps_and_gets_them(tiny, temporary_method):
    from naclip.heads import register_head
    from naclip.methods import Method

    seen = []

    @register_head("test-tapped", taps=lambda settings: Taps(attention=frozenset({1})))
    def tapped(inputs, settings):
        seen.append((sorted(inputs.trunk.attention), inputs.windows.shape, inputs.queries.shape))
        return inputs.encoder.last_block(inputs.trunk, inputs.grid, "kk", "reduced", 5.0)

    temporary_method(Method("test-tapped", "k-k block through a head of its own", {}, {}, head="test-tapped"))
    seg = tiny(pamr_steps=0, slide_crop=0)
    seg.set_classes(["cat", "dog"])
    image = torch.randn(3, 64, 80)
    plain, custom = seg.predict_variants(image, (64, 80), [{"attention": "kk"}, {"method": "test-tapped"}])
    assert seen == [([1], (1, 3, 64, 80), (2, 32))]
    np.testing.assert_allclose(plain.probs, custom.probs, atol=1e-6)


def test_last_block_projection_is_computed_once_per_trunk(encoder, monkeypatch):
    """A sweep projects q, k, v (and k k^T) once per trunk: every setting on one trunk shares them, a new
    trunk computes its own, and the shared values equal a fresh computation bit for bit."""
    images = torch.randn(2, 3, 64, 80)
    trunk, grid = encoder.run_trunk(images), (4, 5)
    calls = []
    original = encoder.qkv
    monkeypatch.setattr(encoder, "qkv", lambda x, block=None: calls.append(x.shape) or original(x, block))
    first = encoder.last_block(trunk, grid, "naclip", "reduced", 5.0)
    encoder.last_block(trunk, grid, "naclip", "reduced", 2.0)
    encoder.last_block(trunk, grid, "csa", "vanilla", 5.0)
    encoder.attention_weights(trunk, grid, "kk", 5.0)
    assert len(calls) == 1
    kept = encoder.last_qkv(trunk)
    assert kept.kk is kept.kk  # k k^T computed once for every sigma
    fresh = encoder.last_block(Trunk(trunk.tokens.clone()), grid, "naclip", "reduced", 5.0)
    assert len(calls) == 2
    torch.testing.assert_close(first, fresh, rtol=0, atol=0)


def test_a_head_with_trainable_parameters_predicts_without_recording_gradients(tiny, temporary_method):
    from naclip.heads import register_head
    from naclip.methods import Method

    scale = nn.Parameter(torch.tensor(2.0))

    @register_head("test-trainable")
    def trainable(inputs, settings):
        return inputs.encoder.last_block(inputs.trunk, inputs.grid, "kk", "reduced", 5.0) * scale

    temporary_method(Method("test-trainable", "k-k features times a trainable scale", {}, {}, head="test-trainable"))
    seg = tiny(pamr_steps=0, slide_crop=32, slide_stride=16)
    seg.set_classes(["cat", "dog"])
    image = torch.randn(3, 48, 64)
    plain, custom = seg.predict_variants(image, (48, 64), [{"attention": "kk"}, {"method": "test-trainable"}])
    np.testing.assert_allclose(plain.probs, custom.probs, atol=1e-6)  # scaling features changes no cosine
