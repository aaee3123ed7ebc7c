"""Dense features: the trunk, the replaced last block, position interpolation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from naclip.encoder import interpolate_positions


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
    expected, _ = block.attn(x, x, x, need_weights=False)  # vanilla attention through torch's own module
    expected = encoder.visual.ln_post(expected) @ encoder.visual.proj
    torch.testing.assert_close(encoder.head(tokens, (14, 14), "vanilla", "reduced", 5.0), expected[:, 1:])


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
