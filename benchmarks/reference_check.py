"""Agreement with the authors' implementation on the same weights and images (fp32, CPU).

Needs a checkout of the reference code (github.com/sinahmr/NACLIP), which is not shipped here.
Its mmseg/mmengine imports are replaced by small stand-ins; none of its code is changed. Both
sides get the same prepared image tensor, so the comparison covers everything after
preprocessing: features, attention variants, architectures, windows, PAMR, scoring.

Run: python benchmarks/reference_check.py --reference /path/to/NACLIP [--checkpoint ViT-B-16.pt]
Without --checkpoint, random ViT-B-16 (QuickGELU) weights are used, rounded to float16 because
the reference loader stores weights in float16.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import sys
import tempfile
import types
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from naclip import Segmenter
from naclip.preprocess import load_image

SAMPLES = Path(__file__).resolve().parents[1] / "naclip" / "resources" / "samples"
DEFAULT_IMAGES = [SAMPLES / "voc/JPEGImages/sample_0000.jpg", SAMPLES / "ade/images/validation/ADE_val_00000001.jpg"]


class _Sample:
    """Stands in for mmseg's SegDataSample: metadata in, predictions out."""

    def __init__(self, meta: dict):
        self.metainfo, self.data = meta, {}

    def set_data(self, data: dict) -> None:
        self.data.update(data)


def _stub_frameworks() -> None:
    """Minimal stand-ins for the mm* modules the reference imports."""

    class BaseSegmentor(torch.nn.Module):
        def __init__(self, data_preprocessor=None):
            super().__init__()

    modules = {
        "mmengine": {},
        "mmengine.structures": {"PixelData": lambda **kw: types.SimpleNamespace(**kw)},
        "mmseg": {},
        "mmseg.models": {},
        "mmseg.models.data_preprocessor": {"SegDataPreProcessor": lambda **kw: None},
        "mmseg.models.segmentors": {"BaseSegmentor": BaseSegmentor},
        "mmseg.registry": {"MODELS": types.SimpleNamespace(register_module=lambda: lambda cls: cls)},
        "pkg_resources": {"packaging": types.SimpleNamespace(version=types.SimpleNamespace(parse=lambda v: (2,)))},
    }
    for name, attributes in modules.items():
        module = types.ModuleType(name)
        module.__dict__.update(attributes)
        sys.modules.setdefault(name, module)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, required=True, help="checkout of the authors' NACLIP code")
    parser.add_argument("--checkpoint", type=Path, help="OpenAI-format ViT-B/16 checkpoint (default: random weights)")
    parser.add_argument("--classes", type=Path, default=SAMPLES.parent / "classes" / "voc21.txt")
    parser.add_argument("--images", type=Path, nargs="+", default=DEFAULT_IMAGES)
    args = parser.parse_args()

    warnings.simplefilter("ignore")
    reference = _load_reference(args.reference)
    with tempfile.TemporaryDirectory() as scratch:
        checkpoint = args.checkpoint or _random_checkpoint(Path(scratch) / "vit-b-16.pt")
        ours = Segmenter("ViT-B-16-quickgelu", pretrained=str(checkpoint), device="cpu", dtype=torch.float32)
        ours.set_classes(args.classes)
        theirs = reference.NACLIP(str(checkpoint), str(args.classes), device=torch.device("cpu"))
    theirs.net.float()
    theirs.dtype = torch.float32

    rows = []
    configs = itertools.product(["vanilla", "kk", "csa", "nonly", "naclip"], ["vanilla", "reduced"], [0, 224], [0, 10])
    for attention, arch, crop, pamr_steps in configs:
        theirs.net.visual.arch, theirs.net.visual.attn_strategy = arch, attention
        theirs.pamr = reference.PAMR(pamr_steps, dilations=(8, 16)) if pamr_steps else None
        theirs.slide_crop, theirs.prob_thd = crop, 0.1
        ours.slide_crop = crop
        for path in args.images:
            image = load_image(path)
            tensor = ours.prepare(image)
            sample = _Sample({"ori_shape": image.shape[:2], "img_path": str(path)})
            with torch.no_grad():
                theirs.predict(tensor[None], [sample])
            variant = {"attention": attention, "arch": arch, "pamr_steps": pamr_steps, "prob_threshold": 0.1}
            result = ours.predict_variants(tensor, image.shape[:2], [variant])[0]
            rows.append(
                {
                    "attention": attention,
                    "arch": arch,
                    "slide_crop": crop,
                    "pamr_steps": pamr_steps,
                    "image": path.name,
                    "label_agreement_%": 100 * (result.labels == sample.data["pred_sem_seg"].data[0].numpy()).mean(),
                    "max_prob_diff": float(np.abs(result.probs - sample.data["seg_logits"].data.numpy()).max()),
                }
            )
            print(pd.DataFrame(rows[-1:]).to_string(header=len(rows) == 1, index=False), flush=True)
    frame = pd.DataFrame(rows)
    worst_agreement, worst_diff = frame["label_agreement_%"].min(), frame["max_prob_diff"].max()
    print(
        f"worst label agreement {worst_agreement:.4f} % (target >= 99.9), "
        f"worst probability difference {worst_diff:.2e} (target <= 1e-3)"
    )
    sys.exit(0 if worst_agreement >= 99.9 and worst_diff <= 1e-3 else 1)


def _load_reference(root: Path) -> types.ModuleType:
    """The reference's segmentor module (its file is also called naclip.py, hence the explicit load)."""
    if not (root / "naclip.py").is_file() or not (root / "clip").is_dir():
        raise SystemExit(f"{root} is not a checkout of the reference code: expected naclip.py and clip/ in it")
    _stub_frameworks()
    sys.path.insert(0, str(root))
    spec = importlib.util.spec_from_file_location("naclip_reference", root / "naclip.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _random_checkpoint(path: Path) -> Path:
    """Random ViT-B-16 (QuickGELU) weights, exactly representable in float16."""
    clip = Segmenter("ViT-B-16-quickgelu", pretrained=None, device="cpu").clip
    torch.save({k: v.half().float() if v.is_floating_point() else v for k, v in clip.state_dict().items()}, path)
    return path


if __name__ == "__main__":
    main()
