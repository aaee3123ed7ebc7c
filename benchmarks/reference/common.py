"""What every authors' checkout needs: module isolation and stand-ins, their configs, mmcv's data
pipeline, shared random weights, test images and the comparison of two predictions."""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

from naclip import Segmenter
from naclip.heads import HeadInput
from naclip.methods import get_method

SAMPLES = Path(__file__).resolve().parents[2] / "naclip" / "resources" / "samples"
CLASSES = SAMPLES.parent / "classes"
MMSEG_MEAN = (122.771, 116.746, 104.094)  # SegDataPreProcessor of all three segmentors
MMSEG_STD = (68.501, 66.632, 70.323)
LONG_SIDE = 2048

# The benchmark's config file in each checkout (SCLIP, ClearCLIP and NACLIP name them alike).
CONFIG_FILES = {
    "voc21": "cfg_voc21.py",
    "voc20": "cfg_voc20.py",
    "context60": "cfg_context60.py",
    "context59": "cfg_context59.py",
    "coco_object": "cfg_coco_object.py",
    "coco_stuff": "cfg_coco_stuff164k.py",
    "cityscapes": "cfg_city_scapes.py",
    "ade20k": "cfg_ade20k.py",
}


# -- the authors' code, isolated -----------------------------------------------------------------
class _Sample:
    """Stands in for mmseg's SegDataSample: metadata in, predictions out."""

    def __init__(self, meta: dict):
        self.metainfo, self.data = meta, {}

    def __getattr__(self, name: str) -> Any:
        """Metadata fields read as attributes (`data_samples[0].img_path`), as mmseg's data samples allow."""
        try:
            return self.__dict__["metainfo"][name]
        except KeyError:
            raise AttributeError(name) from None

    def set_data(self, data: dict) -> None:
        self.data.update(data)


class _BaseSegmentor(torch.nn.Module):
    """mmseg's BaseSegmentor reduced to what the segmentors use: an nn.Module."""

    def __init__(self, data_preprocessor: object = None):
        super().__init__()


def _module(name: str, **attributes: Any) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    return module


def framework_stubs() -> dict[str, types.ModuleType]:
    """Stand-ins for the mmseg / mmengine names the segmentors import (preprocessing is done here)."""
    stubs = {
        "mmengine": _module("mmengine"),
        "mmengine.structures": _module("mmengine.structures", PixelData=lambda **kw: types.SimpleNamespace(**kw)),
        "mmseg": _module("mmseg"),
        "mmseg.models": _module("mmseg.models"),
        "mmseg.models.data_preprocessor": _module("mmseg.models.data_preprocessor", SegDataPreProcessor=_no_op),
        "mmseg.models.segmentors": _module("mmseg.models.segmentors", BaseSegmentor=_BaseSegmentor),
        "mmseg.registry": _module("mmseg.registry", MODELS=types.SimpleNamespace(register_module=lambda: _identity)),
    }
    if importlib.util.find_spec("pkg_resources") is None:  # OpenAI's clip.py: a torch version check only
        version = types.SimpleNamespace(parse=lambda text: (2,))
        stubs["pkg_resources"] = _module("pkg_resources", packaging=types.SimpleNamespace(version=version))
    return stubs


def _no_op(**kwargs: Any) -> None:
    return None


def _identity(cls: type) -> type:
    return cls


class Checkout:
    """One authors' repository, imported with its own top-level packages (`clip`, `open_clip`, ...).

    Their packages would clash with each other and with the installed open_clip, so they live in
    sys.modules only inside `active()`; outside it the process sees its own modules again.
    """

    def __init__(self, root: Path, module_file: str, packages: Sequence[str], stubs: Mapping[str, types.ModuleType]):
        if not (root / module_file).is_file():
            raise SystemExit(f"{root} is not the expected checkout: {module_file} is missing")
        self.root, self.packages = root, tuple(packages) + tuple(stubs)
        self.modules: dict[str, types.ModuleType] = dict(stubs)
        path = list(sys.path)
        sys.path.insert(0, str(root))
        try:
            with self.active():
                spec = importlib.util.spec_from_file_location(
                    f"reference_{root.name}_{module_file[:-3]}", root / module_file
                )
                self.module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(self.module)
        finally:
            sys.path[:] = path  # also drops the segmentors' own sys.path.append("..")

    def _owned(self, name: str) -> bool:
        return any(name == p or name.startswith(p + ".") for p in self.packages)

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """sys.modules holds this checkout's packages (and stand-ins) while the block runs."""
        ours = {name: sys.modules.pop(name) for name in list(sys.modules) if self._owned(name)}
        sys.modules.update(self.modules)
        try:
            yield
        finally:
            self.modules = {name: sys.modules.pop(name) for name in list(sys.modules) if self._owned(name)}
            sys.modules.update(ours)


@contextlib.contextmanager
def patched(target: object, name: str, value: object) -> Iterator[None]:
    """`target.name = value` while the block runs."""
    original = getattr(target, name)
    setattr(target, name, value)
    try:
        yield
    finally:
        setattr(target, name, original)


def read_config(root: Path, benchmark: str) -> tuple[dict[str, Any], int]:
    """The segmentor's keyword arguments (base config merged with the benchmark's) and the short side S."""
    config = _exec(root / "configs" / CONFIG_FILES[benchmark])
    base = _exec(root / "configs" / Path(config["_base_"]).name)
    model = {**base["model"], **config["model"]}
    model.pop("type")
    if "name_path" in model:
        model["name_path"] = str(root / "configs" / Path(model["name_path"]).name)
    (resize,) = [step for step in config["test_pipeline"] if step["type"] == "Resize"]
    assert resize["keep_ratio"] and max(resize["scale"]) == LONG_SIDE, resize
    return model, min(resize["scale"])


def _exec(path: Path) -> dict[str, Any]:
    namespace: dict[str, Any] = {}
    exec(compile(path.read_text(), str(path), "exec"), namespace)  # mmengine configs are plain Python
    return namespace


@contextlib.contextmanager
def short_templates(module: types.ModuleType) -> Iterator[None]:
    """The segmentor embeds each query with one template instead of 80 (its features are replaced after)."""
    with patched(module, "openai_imagenet_template", module.openai_imagenet_template[:1]):
        yield


@dataclass
class Authors:
    """An authors' segmentor built from their config for one benchmark, fed as mmseg feeds it."""

    checkout: Checkout
    model: torch.nn.Module
    short_side: int
    queries: list[str]  # the queries their class-file parser reads, in order
    own_text: torch.Tensor  # the query embeddings their code computed (one template each when shared)
    predict_context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext

    def predict(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        """(labels (H, W) int64, scores (C, H, W) float32) at the original size."""
        return self.predict_inputs(*mmcv_inputs(path, self.short_side), path)

    def predict_inputs(
        self, inputs: torch.Tensor, ori_shape: tuple[int, int], path: Path
    ) -> tuple[np.ndarray, np.ndarray]:
        """The same from a ready (1, 3, h, w) model input."""
        sample = _Sample({"ori_shape": ori_shape, "img_path": str(path)})
        with self.checkout.active(), self.predict_context(), torch.no_grad():
            self.model.predict(inputs, [sample])
        labels = sample.data["pred_sem_seg"].data[0].cpu().numpy().astype(np.int64)
        return labels, sample.data["seg_logits"].data.float().cpu().numpy()

    @property
    def query_features(self) -> torch.Tensor:
        return self.model.query_features


# -- mmcv's data pipeline ------------------------------------------------------------------------
def mmcv_size(height: int, width: int, short_side: int, long_side: int = LONG_SIDE) -> tuple[int, int]:
    """mmcv `rescale_size((w, h), (long, short))`: the (h, w) `Resize(keep_ratio=True)` resizes to."""
    scale = min(long_side / max(height, width), short_side / min(height, width))
    return int(height * scale + 0.5), int(width * scale + 0.5)


def mmcv_decode(path: Path) -> np.ndarray:
    """`LoadImageFromFile`: uint8 BGR at the original size."""
    return cv2.imdecode(np.frombuffer(path.read_bytes(), np.uint8), cv2.IMREAD_COLOR)


def mmcv_inputs(path: Path, short_side: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """(1, 3, h, w) float32 model input and ori_shape, as decode, Resize, PackSegInputs and
    SegDataPreProcessor (channel flip, then mean / std) produce them."""
    bgr = mmcv_decode(path)
    height, width = mmcv_size(*bgr.shape[:2], short_side)
    resized = cv2.resize(bgr, (width, height), interpolation=cv2.INTER_LINEAR)
    chw = torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1)))
    x = chw[[2, 1, 0]].float()
    x = (x - torch.tensor(MMSEG_MEAN).view(3, 1, 1)) / torch.tensor(MMSEG_STD).view(3, 1, 1)
    return x[None], tuple(bgr.shape[:2])


# -- shared inputs -------------------------------------------------------------------------------
def test_images(scratch: Path, fast: bool) -> list[Path]:
    """Two sample photos and a 2048 x 420 image (its short side, 420, is not a multiple of 16 and
    stays below ClearCLIP's 448 window, so ClearCLIP pads its windows). `fast`: one photo."""
    photo = SAMPLES / "ade/images/validation/ADE_val_00000001.jpg"
    wide = scratch / "wide_2048x420.png"  # lossless, so every decoder reads the same pixels
    cv2.imwrite(str(wide), cv2.resize(mmcv_decode(photo), (2048, 420), interpolation=cv2.INTER_AREA))
    if fast:
        return [photo, wide]
    return [SAMPLES / "voc/JPEGImages/sample_0000.jpg", photo, wide]


def random_checkpoint(path: Path, seed: int = 0) -> Path:
    """Random ViT-B-16 (QuickGELU) weights in OpenAI's state-dict format, exactly representable in
    float16 (the authors' loaders store weights in float16).

    Random towers give nearly collinear embeddings (every pixel, every class alike), so the directions
    that all text outputs, and the one that all image tokens, share are projected out of
    `text_projection` and `visual.proj`: label maps then use several classes.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        clip = open_clip.create_model("ViT-B-16-quickgelu", pretrained=None).eval()
    _round_to_half(clip)
    with torch.no_grad():
        shared = _text_directions(clip)
        clip.text_projection -= shared.T @ (shared @ clip.text_projection)
        shared = _image_direction(clip)
        clip.visual.proj -= torch.outer(shared, shared @ clip.visual.proj)
    _round_to_half(clip)
    state = dict(clip.state_dict())
    state.update(input_resolution=torch.tensor(224), context_length=torch.tensor(77), vocab_size=torch.tensor(49408))
    torch.save(state, path)
    return path


def _round_to_half(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for tensor in module.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(tensor.half().float())


def _text_directions(clip: torch.nn.Module, names: int = 16) -> torch.Tensor:
    """(2, width) orthonormal: the mean pooled text feature (before projection) of some class names
    over the 80 templates, and over the first template alone (what --fast embeds). Prompts run on
    their own length, which a causal mask and end-of-text pooling allow."""
    lines = [line for file in sorted(CLASSES.glob("*.txt")) for line in file.read_text().split("\n") if line]
    chosen = [line.split(",")[0].strip() for line in lines[:: max(1, len(lines) // names)]]
    tokens = open_clip.get_tokenizer("ViT-B-16")([t(name) for name in chosen for t in OPENAI_IMAGENET_TEMPLATES])
    length = int((tokens != 0).sum(1).max())
    x = clip.token_embedding(tokens[:, :length]) + clip.positional_embedding[:length]
    x = clip.ln_final(clip.transformer(x, attn_mask=clip.attn_mask[:length, :length]))
    pooled = x[torch.arange(len(tokens)), tokens.argmax(-1)].reshape(len(chosen), len(OPENAI_IMAGENET_TEMPLATES), -1)
    means = torch.stack([pooled.mean((0, 1)), pooled[:, 0].mean(0)])
    return torch.linalg.qr(means.T).Q.T


def _image_direction(clip: torch.nn.Module) -> torch.Tensor:
    """Unit mean of the image tokens after `ln_post` (before projection) on a sample photo."""
    inputs, _ = mmcv_inputs(SAMPLES / "voc/JPEGImages/sample_0000.jpg", 224)
    captured = []
    handle = clip.visual.ln_post.register_forward_hook(lambda module, args, out: captured.append(out))
    try:
        clip.encode_image(F.interpolate(inputs, size=(224, 224), mode="bilinear"))
    finally:
        handle.remove()
    return F.normalize(captured[0].reshape(-1, captured[0].shape[-1]).mean(0), dim=0)


@torch.no_grad()
def head_direction_weights(checkpoint: Path, scratch: Path, method: str, **overrides: Any) -> Path:
    """The shared random weights with the direction that `method`'s own patch features share also projected
    out of `visual.proj`, values exact in float16; saved beside the checkpoint.

    Taken after `ln_post` on the centre 224 window of a sample photo, through naclip's head of `method`
    (with `overrides`); both sides then run the same weights. Heads that add [CLS] and sums of blocks to every
    patch give features whose common direction otherwise wins every pixel on random weights.
    """
    seg = Segmenter(
        method=method, model="ViT-B-16", pretrained=str(checkpoint), device="cpu", dtype="float32", **overrides
    )
    inputs, _ = mmcv_inputs(SAMPLES / "voc/JPEGImages/sample_0000.jpg", 224)
    window = F.interpolate(inputs, size=(224, 224), mode="bilinear")
    head = get_method(method).head_spec
    trunk = seg.encoder.run_trunk(window, head.taps(seg.settings))
    captured: list[torch.Tensor] = []
    hook = seg.encoder.visual.ln_post.register_forward_hook(lambda module, args, out: captured.append(out))
    try:
        head.fn(HeadInput(seg.encoder, trunk, (14, 14), window, torch.empty(0)), seg.settings)
    finally:
        hook.remove()
    shared = F.normalize(captured[0].reshape(-1, captured[0].shape[-1]).mean(0), dim=0)
    state = torch.load(checkpoint)
    proj = state["visual.proj"]
    state["visual.proj"] = (proj - torch.outer(shared, shared @ proj)).half().float()
    path = scratch / f"{checkpoint.stem}-{method}.pt"
    torch.save(state, path)
    return path


# -- comparison ----------------------------------------------------------------------------------
@dataclass
class Outcome:
    """One image under one method's protocol on one benchmark, both sides."""

    method: str
    benchmark: str
    image: str
    theirs: tuple[np.ndarray, np.ndarray]
    ours: tuple[np.ndarray, np.ndarray]
    extra: dict[str, Any] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        (their_labels, their_probs), (our_labels, our_probs) = self.theirs, self.ours
        same_shape = their_probs.shape == our_probs.shape and their_labels.shape == our_labels.shape
        return {
            "method": self.method,
            "benchmark": self.benchmark,
            "image": self.image,
            "size": "x".join(map(str, their_labels.shape)),
            "label_agreement_%": 100 * float((their_labels == our_labels).mean()) if same_shape else float("nan"),
            "max_prob_diff": float(np.abs(their_probs - our_probs).max()) if same_shape else float("inf"),
            "classes_theirs": len(np.unique(their_labels)),
            "classes_ours": len(np.unique(our_labels)),
            # how much the thresholds did on the authors' side: classes whose scores were all zeroed
            # (SCLIP's area threshold) and pixels sent to class 0 by the probability threshold
            "zeroed_classes": int((their_probs.reshape(len(their_probs), -1).max(1) == 0).sum()),
            "thresholded_%": 100 * float(((their_labels == 0) & (their_probs.argmax(0) != 0)).mean()),
            **self.extra,
        }


Predictor = Callable[[Path], tuple[np.ndarray, np.ndarray]]


def construct(
    checkout: Checkout,
    class_name: str,
    kwargs: Mapping[str, Any],
    short_side: int,
    queries: torch.Tensor | None = None,
    patches: Sequence[contextlib.AbstractContextManager] = (),
    predict_context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> Authors:
    """Build the authors' segmentor with `kwargs`. With `queries`, their text encoding is cut to one
    template and its result replaced by `queries` (our embeddings), which saves minutes on a CPU."""
    module = checkout.module
    with checkout.active(), contextlib.ExitStack() as stack:
        for patch in patches:
            stack.enter_context(patch)
        if queries is not None:
            stack.enter_context(short_templates(module))
        model = getattr(module, class_name)(**kwargs)
        words, _ = module.get_cls_idx(kwargs["name_path"])
    own_text = model.query_features
    if queries is not None:
        model.query_features = queries.to(own_text.dtype).clone()
    return Authors(checkout, model.eval(), short_side, list(words), own_text, predict_context)
