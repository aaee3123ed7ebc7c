"""Second backbones (`naclip.vfm`): the restated forward against timm's and SAM's own, the authors' position
rules, preprocessing and checkpoint handling, on tiny random models; one full-size DINO ViT-B/8 for shapes."""

from __future__ import annotations

import time

import pytest
import timm.models.vision_transformer as vit
import torch
import torch.nn.functional as F
from segment_anything.modeling import ImageEncoderViT

from naclip import vfm as vfm_module
from naclip.second_model import load_second_model
from naclip.vfm import dino_positions, dinov2_positions, sam_features, vfm, vit_features


def tiny_vit(**kwargs) -> vit.VisionTransformer:
    torch.manual_seed(0)
    module = vit.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=0, **kwargs
    )
    with torch.no_grad():  # timm starts these at zero: random values so that they count
        for name in ("pos_embed", "cls_token", "reg_token"):
            if getattr(module, name, None) is not None:
                getattr(module, name).normal_()
    return module.eval()


def plain_attention(block: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) of a timm block's attention on tokens x (B, T, D), per head."""
    qkv = block.attn.qkv(block.norm1(x)).reshape(len(x), x.shape[1], 3, 2, -1).permute(2, 0, 3, 1, 4)
    return (qkv[0] @ qkv[1].transpose(-2, -1) / qkv.shape[-1] ** 0.5).softmax(-1)


def test_a_dino_vit_at_its_native_size_is_timms_forward():
    module, images = tiny_vit(), torch.randn(2, 3, 32, 32)
    out = vit_features(module, images, dino_positions)
    expected = module.forward_features(images)  # (2, 1 + 16, 32) after the final norm
    torch.testing.assert_close(out.tokens, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.patches, expected[:, 1:].transpose(1, 2).reshape(2, 32, 4, 4), atol=1e-5, rtol=0)
    x = module.blocks[0](module._pos_embed(module.patch_embed(images)))  # tokens entering the last block
    torch.testing.assert_close(out.attention(), plain_attention(module.blocks[-1], x), atol=1e-5, rtol=1e-5)
    assert out.prefix == 1 and out.qkv.k.shape == (2, 2, 17, 16)


def test_dinos_position_rule_at_another_size():
    """Bicubic with scale factor (g + 0.1) / sqrt(N) per side, [CLS]'s own kept (DINO's interpolate_pos_encoding)."""
    module = tiny_vit()
    positions = dino_positions(module, (6, 5))
    patches = module.pos_embed[:, 1:].reshape(1, 4, 4, 32).permute(0, 3, 1, 2)
    resized = F.interpolate(patches, scale_factor=(6.1 / 4, 5.1 / 4), mode="bicubic")
    expected = torch.cat([module.pos_embed[:, :1], resized.permute(0, 2, 3, 1).reshape(1, 30, 32)], dim=1)
    torch.testing.assert_close(positions, expected)
    out = vit_features(module, torch.randn(1, 3, 48, 40), dino_positions)
    assert out.grid == (6, 5) and out.tokens.shape == (1, 31, 32)


def test_a_dinov2_vit_with_registers():
    """Registers after [CLS], positions for patches only (bicubic, antialiased, to the grid's size)."""
    module = tiny_vit(reg_tokens=4, no_embed_class=True, init_values=1e-5)
    images = torch.randn(1, 3, 32, 32)
    out = vit_features(module, images, dinov2_positions)
    torch.testing.assert_close(out.tokens, module.forward_features(images), atol=1e-5, rtol=1e-5)
    assert out.prefix == 5 and out.patches.shape == (1, 32, 4, 4)
    patches = module.pos_embed.reshape(1, 4, 4, 32).permute(0, 3, 1, 2)
    resized = F.interpolate(patches, size=(7, 3), mode="bicubic", antialias=True).permute(0, 2, 3, 1)
    torch.testing.assert_close(dinov2_positions(module, (7, 3)), resized.reshape(1, 21, 32))


def test_a_dinov2_hub_state_dict_is_converted():
    """DINOv2's hub layout ([CLS] position in pos_embed, register_tokens, mask_token) loads into timm's."""
    module = tiny_vit(reg_tokens=4, no_embed_class=True, init_values=1e-5)
    state = dict(module.state_dict())
    position = torch.randn(1, 1, 32)
    hub = {key: value for key, value in state.items() if key not in ("reg_token", "cls_token", "pos_embed")}
    hub.update(
        register_tokens=state["reg_token"],
        cls_token=state["cls_token"] - position,
        pos_embed=torch.cat([position, state["pos_embed"]], dim=1),
        mask_token=torch.zeros(1, 32),
    )
    converted = vfm_module._dinov2_state(hub, module)
    assert converted.keys() == state.keys()
    torch.testing.assert_close(converted["cls_token"], state["cls_token"])


def test_sam_features_are_the_image_encoders():
    torch.manual_seed(0)
    encoder = ImageEncoderViT(
        img_size=64, patch_size=16, embed_dim=32, depth=2, num_heads=2, out_chans=8, use_rel_pos=True,
        window_size=2, global_attn_indexes=(1,),
    ).eval()  # fmt: skip
    with torch.no_grad():
        encoder.pos_embed.normal_()
        for block in encoder.blocks:
            block.attn.rel_pos_h.normal_(), block.attn.rel_pos_w.normal_()
    module = torch.nn.Module()
    module.image_encoder = encoder
    images = torch.randn(2, 3, 64, 64)
    out = sam_features(module, images)
    torch.testing.assert_close(out.patches, encoder(images), atol=1e-5, rtol=1e-5)
    weights = out.attention()
    assert weights.shape == (2, 2, 16, 16) and out.tokens.shape == (2, 16, 32)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 2, 16))


def test_windows_are_renormalised_as_the_authors_do():
    """UnNormalize with OpenAI's 0..1 mean/std, then ImageNet's Normalize (ProxyCLIP's `forward_feature`)."""
    windows = torch.randn(2, 3, 20, 30)
    clip_mean, clip_std = (
        torch.tensor([0.48145466, 0.4578275, 0.40821073]),
        torch.tensor([0.26862954, 0.26130258, 0.27577711]),
    )
    net_mean, net_std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    pixels = windows * clip_std[:, None, None] + clip_mean[:, None, None]
    expected = (pixels - net_mean[:, None, None]) / net_std[:, None, None]
    torch.testing.assert_close(vfm("dino_vitb8").prepare(windows), expected, atol=1e-5, rtol=1e-5)
    squashed = vfm("sam_vitb").prepare(windows, torch.float16)
    assert squashed.shape == (2, 3, 1024, 1024) and squashed.dtype == torch.float16


def test_a_tag_downloads_the_authors_checkpoint_with_a_timeout(monkeypatch):
    asked = []

    def fake(url, **kwargs):
        asked.append((url, kwargs, vfm_module.socket.getdefaulttimeout()))
        return {"weight": torch.zeros(1)}

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake)
    assert vfm_module.download("dino_vitbase8_pretrain") == {"weight": torch.zeros(1)}
    url, kwargs, timeout = asked[0]
    assert url == "https://dl.fbaipublicfiles.com/dino/dino_vitbase8_pretrain/dino_vitbase8_pretrain.pth"
    assert kwargs["weights_only"] and timeout == vfm_module.DOWNLOAD_TIMEOUT
    assert vfm_module.socket.getdefaulttimeout() is None  # restored
    with pytest.raises(ValueError, match="unknown checkpoint 'dino'"):
        vfm_module.download("dino")


def test_offline_loading_fails_fast_naming_the_model_and_the_flag(monkeypatch):
    def offline(url, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    start = time.perf_counter()
    with pytest.raises(RuntimeError) as error:
        load_second_model(vfm("dino_vitb16"), "dino_vitbase16_pretrain", torch.device("cpu"), torch.float32, 0)
    assert time.perf_counter() - start < 5  # before building the model
    message = str(error.value)
    assert "'dino_vitb16'" in message and "--vfm-pretrained dino_vitb16=/path/to/checkpoint" in message
    assert "\n" not in message


def test_a_fixed_precision_and_a_file_checkpoint(tmp_path):
    model = vfm("dino_vitb16", dtype=torch.float64)
    torch.manual_seed(1)
    path = tmp_path / "dino.pt"
    torch.save(model.build().state_dict(), path)
    module = load_second_model(model, str(path), torch.device("cpu"), torch.float16, 0)
    assert next(module.parameters()).dtype == torch.float64  # the model's own precision wins
    torch.testing.assert_close(module.state_dict()["pos_embed"], torch.load(path)["pos_embed"].double())


def test_full_size_dino_vitb8_shapes_at_336():
    model = vfm("dino_vitb8", full=True)
    with pytest.warns(UserWarning, match="RANDOM"):
        module = load_second_model(model, None, torch.device("cpu"), torch.float32, 0)
    with torch.no_grad():
        out = model.features(module, torch.randn(1, 3, 336, 336))
    assert out.patches.shape == (1, 768, 42, 42) and out.tokens.shape == (1, 1 + 42 * 42, 768)
    assert out.qkv.v.shape == (1, 12, 1 + 42 * 42, 64) and out.prefix == 1
    assert vfm("dino_vitb8").features(module, torch.randn(1, 3, 112, 112)).shape == (1, 768, 14, 14)
