"""Loading an open_clip ViT: a pretrained tag, a local checkpoint, or random weights."""

from __future__ import annotations

import os
import socket
import warnings
import zipfile
from importlib import resources
from pathlib import Path
from urllib.parse import urlparse

import open_clip
import torch
from open_clip.transformer import VisionTransformer

# Small ViT configs shipped with the package (random weights only): tests and smoke runs.
_CONFIG_DIR = resources.files("naclip") / "resources" / "model_configs"
for _config in _CONFIG_DIR.iterdir():
    if _config.name.endswith(".json"):
        open_clip.add_model_config(Path(str(_config)))

HUB_TIMEOUT_S = 3.0

OFFLINE_HELP = (
    "Pretrained weights for {model!r} / {tag!r} are not in the local cache and {host} cannot be reached. "
    "Either run once on a machine with network access (the weights are cached under ~/.cache/huggingface "
    "or ~/.cache/clip; copy that folder here), or download the checkpoint yourself and pass its path: "
    "Segmenter(model={model!r}, pretrained='/path/to/checkpoint') / `--pretrained /path/to/checkpoint`. "
    "For tests and smoke runs, pretrained=None gives random weights."
)


def vit_models() -> list[str]:
    """open_clip model names whose image tower is a plain ViT that NACLIP can modify."""
    return [name for name in open_clip.list_models() if _is_plain_vit(open_clip.get_model_config(name))]


def _is_plain_vit(config: dict | None) -> bool:
    vision = (config or {}).get("vision_cfg", {})
    return (
        isinstance(vision.get("layers"), int)
        and "timm_model_name" not in vision
        and not vision.get("attentional_pool", False)
    )


def _check_model_name(model: str) -> None:
    config = open_clip.get_model_config(model)
    if config is None:
        vits = ", ".join(vit_models()[:12])
        raise ValueError(f"unknown open_clip model {model!r}; expected an open_clip ViT name such as {vits}, ...")
    if not _is_plain_vit(config):
        raise ValueError(
            f"model {model!r} has no plain ViT image tower (ResNet, ConvNeXt, timm or attention-pooled towers "
            "are not supported): NACLIP replaces the last transformer block of a CLIP ViT. "
            "Use e.g. ViT-B-16, ViT-B-32, ViT-L-14 or ViT-L-14-336."
        )


def _cached_weights(config: dict, cache_dir: str | None) -> str | None:
    """The local path of a tag's weights when already downloaded, else None."""
    hub = config.get("hf_hub", "")
    if hub:
        from huggingface_hub import try_to_load_from_cache

        repo, filename = os.path.split(hub)
        names = [filename or "open_clip_pytorch_model.bin"]
        if names[0].endswith((".bin", ".pth")):
            names.insert(0, names[0][:-4] + ".safetensors")
        if names[-1] == "open_clip_pytorch_model.bin":
            names.insert(0, "open_clip_model.safetensors")
        for name in names:
            path = try_to_load_from_cache(repo, name, cache_dir=cache_dir)
            if isinstance(path, str):
                return path
    url = config.get("url", "")
    if url:
        path = Path(cache_dir or Path.home() / ".cache" / "clip") / os.path.basename(url)
        if path.is_file():
            return str(path)
    return None


def _reachable(host: str) -> bool:
    try:
        socket.create_connection((host, 443), timeout=HUB_TIMEOUT_S).close()
        return True
    except OSError:
        return False


def _weights_host(config: dict) -> str:
    if config.get("hf_hub"):
        return "huggingface.co"
    return urlparse(config.get("url", "")).hostname or "huggingface.co"


OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")


def _openai_state_dict(path: str) -> dict | None:
    """The weights of an OpenAI-format checkpoint (TorchScript archive or state dict), else None.

    OpenAI's CLIP models all use QuickGELU; their files carry three extra size entries.
    """
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            scripted = any(name.endswith("constants.pkl") for name in archive.namelist())
        if scripted:
            state = torch.jit.load(path, map_location="cpu").state_dict()
            return {k: v for k, v in state.items() if k not in OPENAI_EXTRA_KEYS}
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # any unreadable file gets the same message
        raise ValueError(f"checkpoint {path!r} cannot be read ({error}); expected a PyTorch state dict") from error
    if isinstance(state, dict) and any(key in state for key in OPENAI_EXTRA_KEYS):
        return {k: v for k, v in state.items() if k not in OPENAI_EXTRA_KEYS}
    return None


def random_weights_warning(message: str) -> None:
    """Warn that a model has random weights, without the source line a warning usually quotes (in a notebook
    that line is noise beside the message)."""
    warnings.warn_explicit(message, UserWarning, filename="naclip", lineno=0, module="naclip")


def load_clip(
    model: str = "ViT-B-16",
    pretrained: str | os.PathLike | None = "openai",
    device: str | torch.device = "cpu",
    cache_dir: str | None = None,
) -> tuple[torch.nn.Module, object]:
    """An open_clip CLIP model (eval mode, on `device`) and its tokenizer.

    `pretrained` is an open_clip tag (``openai``, ``laion2b_s34b_b88k``, ...), a local checkpoint file
    (open_clip state dict, or OpenAI's format, which implies QuickGELU), or None for random weights.
    """
    _check_model_name(model)
    quick_gelu = False
    if pretrained is None:
        random_weights_warning(
            f"naclip: {model} has RANDOM weights (pretrained=None); its segmentations are meaningless."
        )
    elif os.path.isfile(pretrained):
        pretrained = str(pretrained)
        openai_state = _openai_state_dict(pretrained)
        if openai_state is not None:  # open_clip's loader takes neither TorchScript nor the extra keys
            clip = open_clip.create_model(model, pretrained=None, force_quick_gelu=True, device=device)
            try:
                clip.load_state_dict(openai_state)
            except RuntimeError as error:
                raise ValueError(f"checkpoint {pretrained!r} does not fit model {model!r}: {error}") from error
            return clip.to(device).eval(), open_clip.get_tokenizer(model)
    else:
        tags = open_clip.list_pretrained_tags_by_model(model)
        if str(pretrained) not in tags:
            if any(sep in str(pretrained) for sep in "/\\."):
                raise FileNotFoundError(f"checkpoint file {str(pretrained)!r} does not exist")
            raise ValueError(f"unknown pretrained tag {pretrained!r} for {model}; expected one of {tags} or a file")
        config = open_clip.get_pretrained_cfg(model, str(pretrained))
        quick_gelu = bool(config.get("quick_gelu", False))
        if _cached_weights(config, cache_dir) is None:
            host = _weights_host(config)
            if not _reachable(host):
                raise RuntimeError(OFFLINE_HELP.format(model=model, tag=pretrained, host=host))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="QuickGELU mismatch")
        clip = open_clip.create_model(
            model, pretrained=pretrained, force_quick_gelu=quick_gelu, device=device, cache_dir=cache_dir
        )
    if not isinstance(clip.visual, VisionTransformer):
        raise ValueError(f"model {model!r} has a {type(clip.visual).__name__} image tower; expected a ViT")
    return clip.eval(), open_clip.get_tokenizer(model)
