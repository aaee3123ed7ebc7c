"""The reference-check harness without the authors' checkouts: module isolation, config reading,
mmcv's pipeline, the comparison row and the Markdown table."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from benchmarks.reference import common
from benchmarks.reference_check import to_markdown


def _fake_checkout(root: Path) -> Path:
    """A checkout whose segmentor imports mmseg, its own `clip` package and `prompts`."""
    (root / "clip").mkdir(parents=True)
    (root / "clip" / "__init__.py").write_text("WHO = 'theirs'\n")
    (root / "prompts").mkdir()
    (root / "prompts" / "__init__.py").write_text("")
    (root / "prompts" / "imagenet_template.py").write_text("openai_imagenet_template = [lambda c: f'a {c}.'] * 3\n")
    (root / "configs").mkdir()
    (root / "configs" / "base_config.py").write_text("model = dict(type='Seg', clip_path='ViT-B/16')\n")
    (root / "configs" / "cfg_voc21.py").write_text(
        textwrap.dedent(
            """\
            _base_ = './base_config.py'
            model = dict(name_path='./configs/cls_voc21.txt', logit_scale=65)
            test_pipeline = [dict(type='LoadImageFromFile'), dict(type='Resize', scale=(2048, 336), keep_ratio=True)]
            """
        )
    )
    (root / "seg.py").write_text(
        textwrap.dedent(
            """\
            import sys
            sys.path.append("..")
            import clip
            from mmseg.models.segmentors import BaseSegmentor
            from prompts.imagenet_template import openai_imagenet_template

            def who():
                return clip.WHO, len(openai_imagenet_template)
            """
        )
    )
    return root


def test_checkout_keeps_its_packages_to_itself(tmp_path: Path) -> None:
    root = _fake_checkout(tmp_path / "repo")
    path_before, had_clip = list(sys.path), "clip" in sys.modules
    checkout = common.Checkout(root, "seg.py", ("clip", "prompts"), common.framework_stubs())
    assert sys.path == path_before
    assert ("clip" in sys.modules) == had_clip and "mmseg" not in sys.modules
    with checkout.active():
        assert sys.modules["clip"].WHO == "theirs"
        assert checkout.module.who() == ("theirs", 3)
        with common.short_templates(checkout.module):
            assert len(checkout.module.openai_imagenet_template) == 1
    assert len(checkout.module.openai_imagenet_template) == 3
    assert "mmseg.models.segmentors" not in sys.modules


def test_checkout_refuses_a_wrong_folder(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="seg.py is missing"):
        common.Checkout(tmp_path, "seg.py", ("clip",), {})


def test_config_merges_base_and_benchmark(tmp_path: Path) -> None:
    root = _fake_checkout(tmp_path / "repo")
    model, short_side = common.read_config(root, "voc21")
    assert short_side == 336
    assert model == {"clip_path": "ViT-B/16", "name_path": str(root / "configs" / "cls_voc21.txt"), "logit_scale": 65}


@pytest.mark.parametrize(
    ("shape", "short_side", "expected"),
    [((375, 500), 336, (336, 448)), ((420, 2048), 448, (420, 2048)), ((512, 683), 448, (448, 598))],
)
def test_mmcv_size(shape: tuple[int, int], short_side: int, expected: tuple[int, int]) -> None:
    assert common.mmcv_size(*shape, short_side) == expected


def test_mmcv_inputs_flip_and_normalise(tmp_path: Path) -> None:
    import cv2

    rgb = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    path = tmp_path / "image.png"
    cv2.imwrite(str(path), rgb[..., ::-1])
    inputs, ori_shape = common.mmcv_inputs(path, 40)
    assert ori_shape == (40, 60) and inputs.shape == (1, 3, 40, 60)
    expected = (torch.from_numpy(rgb).permute(2, 0, 1).float() - torch.tensor(common.MMSEG_MEAN)[:, None, None]) / (
        torch.tensor(common.MMSEG_STD)[:, None, None]
    )
    torch.testing.assert_close(inputs[0], expected)


def test_outcome_row_measures_both_sides() -> None:
    probs = np.zeros((3, 2, 2), np.float32)
    probs[1] = 0.6
    probs[2] = 0.4
    theirs = (np.array([[1, 1], [0, 1]]), probs)
    ours = (np.array([[1, 1], [1, 1]]), probs + 1e-4)
    row = common.Outcome("sclip", "voc21", "x.jpg", theirs, ours).row()
    assert row["label_agreement_%"] == 75.0
    assert row["max_prob_diff"] == pytest.approx(1e-4, rel=1e-3)
    assert (row["classes_theirs"], row["classes_ours"], row["zeroed_classes"]) == (2, 1, 1)
    assert row["thresholded_%"] == 25.0


def test_markdown_table() -> None:
    text = to_markdown(pd.DataFrame([{"method": "sclip", "agreement": 100.0, "diff": 2e-6}]))
    assert text.splitlines() == ["| method | agreement | diff |", "|---|---|---|", "| sclip | 100.0000 | 2.0e-06 |"]
