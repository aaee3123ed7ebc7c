"""Segment, settings and caches that cannot be silently wrong: class counts, numbers, files."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from naclip.cli import main
from naclip.viz import colorize, palette
from tests.conftest import VOC_IMAGE

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

TINY = ["--model", "naclip-tiny", "--pretrained", "none", "--device", "cpu", "--pamr-steps", "0"]
TINY += ["--short-side", "64", "--slide-crop", "0"]


def test_segment_keeps_class_indices_past_255(tmp_path):
    classes = tmp_path / "classes.txt"
    order = [i for i in range(300) if i not in (144, 180)] + [144, 180]  # the names this random model picks, last
    classes.write_text("".join(f"thing number {i}\n" for i in order))
    command = ["segment", str(VOC_IMAGE), "--class-file", str(classes), "--out", str(tmp_path / "out")]
    assert main([*command, *TINY, "--save-probs"]) == 0
    labels = np.asarray(Image.open(tmp_path / "out/sample_0000_labels.png"))
    probs = np.load(tmp_path / "out/sample_0000_probs.npy")
    assert labels.dtype == np.uint16 and labels.max() > 255
    np.testing.assert_array_equal(labels, probs.argmax(0))
    assert Image.open(tmp_path / "out/sample_0000_overlay.png").height == 513
    colours = colorize(np.array([[299, 300, 255]]), 300)
    assert (colours[0, 0] == palette(300)[299]).all() and (colours[0, 1] == 255).all()


def test_non_finite_settings_are_refused():
    import typing

    from naclip.methods import METHODS
    from naclip.settings import Settings, coerce

    kinds = {**typing.get_type_hints(Settings)}
    for method in METHODS.values():
        kinds.update(typing.get_type_hints(method.head_spec.params))
    floats = [name for name, kind in kinds.items() if "float" in str(kind)]
    assert {"logit_scale", "sigma", "resclip_rcs_weights", "scclip_beta"} <= set(floats)
    for name in floats:
        for value in ["inf", "-inf", "nan", float("inf"), "1e400"]:
            with pytest.raises(ValueError, match=rf"^{name}=.*; expected (a finite number|finite numbers)"):
                coerce(name, value)


def test_nan_scores_stop_naming_the_image(tmp_path, capsys):
    command = ["segment", str(VOC_IMAGE), "--classes", "cat; dog", "--out", str(tmp_path / "out"), *TINY]
    with pytest.raises(SystemExit) as exited:
        main([*command, "--logit-scale", "inf"])
    assert exited.value.code == 2 and "logit_scale='inf'; expected a finite number" in capsys.readouterr().err
    assert main([*command, "--logit-scale", "1e300"]) == 2  # finite, but overflows float32: NaN probabilities
    err = capsys.readouterr().err
    assert f"{VOC_IMAGE}: the class scores hold NaN; no label is given" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out/sample_0000_labels.png").exists()


def test_a_damaged_text_cache_is_named_discarded_and_embedded_again(tmp_path, monkeypatch):
    import torch

    from naclip.text import QueryCache, encode_queries
    from tests.conftest import make_segmenter

    seg = make_segmenter()
    calls = []

    def counting(clip, tokenizer, queries, templates):
        calls.append(list(queries))
        return encode_queries(clip, tokenizer, queries, templates)

    monkeypatch.setattr("naclip.text.encode_queries", counting)
    fresh = QueryCache("naclip-tiny|weights", directory=tmp_path).embed(seg.clip, seg.tokenizer, ["cat", "dog"])
    path = QueryCache("naclip-tiny|weights", directory=tmp_path).path
    entries = torch.load(path, weights_only=True)
    entries["cat"]["embedding"], entries["dog"]["embedding"] = entries["dog"]["embedding"], entries["cat"]["embedding"]
    torch.save(entries, path)
    for damage in ["swapped", "garbage"]:
        if damage == "garbage":
            path.write_bytes(b"not a torch file")
        calls.clear()
        with pytest.warns(UserWarning, match=rf"text cache '{path}' is damaged .*discarded"):
            cache = QueryCache("naclip-tiny|weights", directory=tmp_path)
        torch.testing.assert_close(cache.embed(seg.clip, seg.tokenizer, ["cat", "dog"]), fresh)
        assert calls == [["cat", "dog"]]
    again = QueryCache("naclip-tiny|weights", directory=tmp_path)  # rewritten whole: loads without a warning
    assert sorted(again.memory) == ["cat", "dog"]


def test_flags_are_never_abbreviated(tmp_path, capsys):
    command = ["segment", str(VOC_IMAGE), "--classes", "cat; dog", "--out", str(tmp_path), *TINY]
    for flags in [["--sigm", "3"], ["--save-prob"]]:
        with pytest.raises(SystemExit) as exited:
            main([*command, *flags])
        assert exited.value.code == 2 and f"unrecognized arguments: {flags[0]}" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["data", "check", "folder", "--image", str(tmp_path)])
    assert "unrecognized arguments: --image" in capsys.readouterr().err


def test_a_resize_past_the_pixel_bound_is_refused_naming_the_image_and_setting(tmp_path, capsys):
    from naclip.preprocess import MAX_RESIZED_PIXELS, check_size

    check_size("a.png", (4096, 4096), 4096, 4096, 16)
    with pytest.raises(ValueError, match=r"^b.png: image is 4096x4095 pixels, resized to 4097x4096 by --short-side"):
        check_size("b.png", (4095, 4096), 4096, 8192, 16)
    assert MAX_RESIZED_PIXELS == 4096 * 4096
    tiny = [*TINY[:-4], "--slide-crop", "0"]  # without --short-side
    command = ["segment", str(VOC_IMAGE), "--classes", "cat; dog", "--out", str(tmp_path / "out"), *tiny]
    for side in ["1e20", "40000"]:
        assert main([*command, "--short-side", side, "--long-side", side]) == 2
        err = capsys.readouterr().err
        size = int(float(side))
        assert err.startswith(f"naclip segment: error: {VOC_IMAGE}: image is 513x513 pixels, resized to ")
        assert f"by --short-side {size} (--long-side {size}); expected at most 16777216 pixels" in err
        assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out/sample_0000_labels.png").exists()


def test_an_image_too_large_for_memory_is_named(tmp_path, monkeypatch, capsys):
    import torch

    from naclip.datasets import folder_dataset
    from naclip.evaluation import evaluate
    from naclip.evaluation.runner import OutOfMemory
    from naclip.segmenter import Segmenter
    from tests.helpers_data import build_folder

    def allocate(*args, **kwargs):
        return torch.empty(1 << 60, dtype=torch.uint8)  # refused by the allocator, as a 12000x9000 image's scores

    monkeypatch.setattr(Segmenter, "_finish", allocate)
    command = ["segment", str(VOC_IMAGE), "--classes", "cat; dog", "--out", str(tmp_path / "out"), *TINY]
    assert main(command) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"naclip segment: error: {VOC_IMAGE}: out of memory predicting this 513x513 image")
    assert "expected a smaller image (downscale it" in err and len(err.strip().splitlines()) == 1
    build_folder(tmp_path / "data", count=2, size=(16, 20))
    data = folder_dataset(tmp_path / "data/images", tmp_path / "data/masks", tmp_path / "data/classes.txt")
    with pytest.raises(OutOfMemory, match=r"im0\.png: out of memory predicting this 20x16 image"):
        evaluate(data, model="naclip-tiny", pretrained=None, device="cpu", short_side=32, progress=False, workers=0)


def test_seeds_past_64_bits_are_refused_with_the_range(tmp_path, capsys):
    from naclip.settings import Settings

    assert Settings(seed="18446744073709551615").seed == 2**64 - 1  # read exactly, not through a float
    command = ["segment", str(VOC_IMAGE), "--classes", "cat; dog", "--out", str(tmp_path / "out"), *TINY]
    for seed in ["99999999999999999999", "18446744073709551616", "-1"]:
        assert main([*command, "--seed", seed]) == 2
        err = capsys.readouterr().err
        assert err == f"naclip segment: error: seed={seed}; expected 0..18446744073709551615 (64 bits)\n"
