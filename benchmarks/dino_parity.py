"""naclip's DINO ViT-B/8 (timm `vit_base_patch8_224.dino`, `naclip.vfm`) against DINO's own `vision_transformer.py`
with one random state dict: last-layer normed tokens, last-block q/k/v and attention, at 224 and 336.

DINO's file is not part of naclip (CASS vendors it: `dino/vision_transformer.py`); it is imported from the path
given, with its `utils.trunc_normal_` (initialisation only, overwritten by the load) taken from torch. timm's own
forward with its position resampling (`dynamic_img_size`) is shown beside: it differs at 336.

    python -m benchmarks.dino_parity /path/to/CASS/dino/vision_transformer.py [--patch 8]
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import types

import timm
import torch

from naclip.vfm import vfm


def authors_module(path: str) -> types.ModuleType:
    """DINO's vision_transformer.py, imported with a stand-in `utils` (trunc_normal_ only)."""
    utils = types.ModuleType("utils")
    utils.trunc_normal_ = torch.nn.init.trunc_normal_
    saved = sys.modules.get("utils")
    sys.modules["utils"] = utils
    try:
        spec = importlib.util.spec_from_file_location("dino_vision_transformer", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop("utils")
        if saved is not None:
            sys.modules["utils"] = saved
    return module


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("vision_transformer", help="DINO's vision_transformer.py")
    parser.add_argument("--patch", type=int, choices=(8, 16), default=8)
    args = parser.parse_args()
    model = vfm(f"dino_vitb{args.patch}", full=True)
    torch.manual_seed(0)
    ours = model.build().eval()
    state = ours.state_dict()
    theirs = authors_module(args.vision_transformer).vit_base(patch_size=args.patch, num_classes=0).eval()
    theirs.load_state_dict(state)  # strict: the same keys, one for one
    timm_own = timm.create_model(
        f"vit_base_patch{args.patch}_224.dino", pretrained=False, num_classes=0, dynamic_img_size=True
    ).eval()
    timm_own.load_state_dict(state)
    print(f"DINO ViT-B/{args.patch}, {len(state)} tensors loaded strictly into both; max abs differences:")
    for size in (224, 336):
        images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(size))
        out = model.forward(ours, images)  # the images stand for renormalised windows
        captured: list[torch.Tensor] = []  # the last block's qkv output, as ProxyCLIP's hook takes it
        hook = theirs.blocks[-1].attn.qkv.register_forward_hook(lambda module, x, y, into=captured: into.append(y))
        tokens = theirs.get_intermediate_layers(images)[0]
        hook.remove()
        heads = theirs.blocks[-1].attn.num_heads
        q, k, v = captured[0].reshape(*tokens.shape[:2], 3, heads, -1).permute(2, 0, 3, 1, 4)
        rows = {
            "tokens (get_intermediate_layers(x)[0])": (out.tokens - tokens).abs().max(),
            "last-block q, k, v": max(
                (a - b).abs().max() for a, b in zip((out.qkv.q, out.qkv.k, out.qkv.v), (q, k, v))
            ),
            "last-block attention": (out.attention() - theirs.get_last_selfattention(images)).abs().max(),
            "timm's own forward_features": (timm_own.forward_features(images) - tokens).abs().max(),
        }
        grid = size // args.patch
        print(f"  {size} x {size} ({grid} x {grid} patches, tokens {tuple(tokens.shape)}):")
        for name, value in rows.items():
            print(f"    {name}: {float(value):.2e}")


if __name__ == "__main__":
    main()
