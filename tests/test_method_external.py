"""Methods from outside the package (an import or a `naclip.methods` entry point), a second frozen model
beside CLIP, and a method's own parameters kept to that method."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import VOC_IMAGE, make_segmenter

from naclip import Segmenter
from naclip.evaluation import evaluate
from naclip.io import content_digest
from naclip.methods import METHODS, get_method, load_entry_points, unregister_method
from naclip.second_model import load_second_model
from naclip.settings import Settings

EXTERNAL = Path(__file__).resolve().parent / "external"
ROOT = Path(__file__).resolve().parents[1]
TINY = dict(model="naclip-tiny", pretrained=None, device="cpu")


def _entry_point(folder: Path) -> Path:
    """An installed distribution whose `naclip.methods` entry point names the test method's module."""
    info = folder / "naclip_proxy_test-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: naclip-proxy-test\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[naclip.methods]\nproxy = proxy_method\n")
    return folder


def test_an_entry_point_registers_a_method_from_outside(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(EXTERNAL))
    monkeypatch.syspath_prepend(str(_entry_point(tmp_path / "site")))
    sys.modules.pop("proxy_method", None)
    try:
        assert "proxy-test" not in METHODS
        assert load_entry_points() == ["proxy"]
        assert get_method("proxy-test").head == "proxy-test"
    finally:
        unregister_method("proxy-test")
        sys.modules.pop("proxy_method", None)


def test_an_entry_point_method_runs_from_the_command_line(tmp_path):
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(_entry_point(tmp_path / "site")), str(EXTERNAL), str(ROOT)]),
    }
    base = [sys.executable, "-m", "naclip", "segment", str(VOC_IMAGE), "--classes", "cat; dog", "--out", str(tmp_path)]
    model = ["--model", "naclip-tiny", "--pretrained", "none", "--device", "cpu"]
    done = subprocess.run([*base, *model, "--method", "proxy-test"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "sample_0000_labels.png").is_file()
    shown = subprocess.run([*base, "--method", "proxy-test", "--help"], env=env, capture_output=True, text=True)
    assert "--proxy-temperature" in shown.stdout and "--sigma" not in shown.stdout  # its own, not NACLIP's
    other = subprocess.run([*base, "--help"], env=env, capture_output=True, text=True)
    assert "--sigma" in other.stdout and "--proxy-temperature" not in other.stdout
    wrong = subprocess.run([*base, *model, "--proxy-temperature", "3"], env=env, capture_output=True, text=True)
    assert wrong.returncode == 2 and "'proxy_temperature' is a parameter of method proxy-test" in wrong.stderr


def test_the_second_model_runs_on_every_window_with_its_weights_recorded(proxy, tmp_path):
    seg = make_segmenter(method="proxy-test", slide_crop=32, slide_stride=16)
    assert seg.config["vfm_pretrained"] == ("toyvit=random",) and seg.random_weights  # random with CLIP's
    seg.set_classes(["cat", "dog", "sky"])
    image = np.asarray(torch.randint(0, 255, (48, 80, 3), dtype=torch.uint8))
    result = seg.predict(image)  # short side 64: 64 x 107, 3 x 6 windows of 32 -> second model's 4 x 4 patches
    assert result.labels.shape == (48, 80) and proxy.seen == [(16, 32, 4, 4), (2, 32, 4, 4)]  # batches of 16
    checkpoint = tmp_path / "toyvit.pt"
    torch.manual_seed(7)
    torch.save(proxy.build().state_dict(), checkpoint)
    loaded = make_segmenter(
        method="proxy-test", slide_crop=32, slide_stride=16, vfm_pretrained=[f"toyvit={checkpoint}"]
    )
    assert loaded.config["vfm_pretrained"][0].startswith(f"toyvit={checkpoint.resolve()}|")
    torch.testing.assert_close(loaded.models["toyvit"][1].state_dict(), torch.load(checkpoint))
    loaded.set_classes(["cat", "dog", "sky"])
    assert not np.array_equal(loaded.predict(image).probs, result.probs)  # the second model's weights matter


def test_the_second_models_weights_key_the_caches_and_the_provenance(proxy, tmp_path):
    clip = tmp_path / "clip.pt"
    torch.save(make_segmenter().clip.state_dict(), clip)  # CLIP's weights from a file: a cached text classifier
    keys = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        checkpoint = tmp_path / f"toyvit-{seed}.pt"
        torch.save(proxy.build().state_dict(), checkpoint)
        seg = make_segmenter(method="proxy-test", pretrained=str(clip), vfm_pretrained=[f"toyvit={checkpoint}"])
        assert not seg.random_weights and f"toyvit=sha256={content_digest(checkpoint)}" in seg._weights_key()
        keys.append(seg.text_cache.path)
    assert keys[0] != keys[1]
    copied = tmp_path / "elsewhere" / "toyvit.pt"
    copied.parent.mkdir()
    shutil.copy(tmp_path / "toyvit-2.pt", copied)  # the same weights elsewhere: the same caches
    again = make_segmenter(method="proxy-test", pretrained=str(clip), vfm_pretrained=[f"toyvit={copied}"])
    assert again.text_cache.path == keys[1]
    frame = evaluate(
        "voc20-sample", limit=1, out=tmp_path / "run", method="proxy-test", progress=False, workers=0,
        model="naclip-tiny", pretrained=str(clip), device="cpu", vfm_pretrained=[f"toyvit={tmp_path / 'toyvit-1.pt'}"],
    )  # fmt: skip
    config = frame.attrs["provenance"]["runs"][0]["variants"][0]["config"]
    assert config["method"] == "proxy-test" and "toyvit-1.pt" in config["vfm_pretrained"][0]
    assert "toyvit-1.pt" in frame["vfm_pretrained"].iloc[0] and "sigma" not in frame


def test_second_model_weights_fail_fast_and_say_how_to_provide_them(proxy):
    with pytest.raises(FileNotFoundError, match=r"'toyvit'.*--vfm-pretrained toyvit=/path/to/checkpoint"):
        load_second_model(proxy.TOY_VIT, "toyvit-tag", torch.device("cpu"), torch.float32, 0)

    def offline(tag):
        raise OSError("network unreachable")

    unreachable = dataclasses.replace(proxy.TOY_VIT, download=offline)
    with pytest.raises(RuntimeError, match=r"could not be downloaded \(OSError: network unreachable\).*toyvit=/path"):
        load_second_model(unreachable, "toyvit-tag", torch.device("cpu"), torch.float32, 0)
    with pytest.raises(ValueError, match="vfm_pretrained names model 'dino'; expected one of toyvit"):
        make_segmenter(method="proxy-test", vfm_pretrained=["dino=none"])
    with pytest.raises(ValueError, match="expected none: this method has no second model"):
        make_segmenter(vfm_pretrained=["dino=none"])
    with pytest.raises(ValueError, match="NAME=WEIGHTS"):
        Settings(vfm_pretrained=("no-name",))


@pytest.mark.parametrize("method", METHODS.names())
def test_a_methods_parameters_stay_out_of_every_other_method(method):
    """Flags, tables, provenance and the resume key are made from `to_dict`: only the method's own parameters."""
    settings = get_method(method).settings()
    own = set(settings.params.to_dict())
    for other in METHODS.names():
        theirs = set(get_method(other).settings().params.to_dict()) - own
        assert not theirs & set(settings.to_dict())
        for key in theirs:
            owner = re.escape(other.split("+")[-1])  # a plug-in's parameter belongs to the method that brought it
            refusal = f"'{key}' is a parameter of method .*{owner}.*, not of '{re.escape(method)}'"
            with pytest.raises(ValueError, match=refusal):
                settings.replace(**{key: getattr(get_method(other).settings(), key)})


@pytest.mark.filterwarnings("ignore:naclip")
def test_the_method_is_recorded_however_the_segmenter_is_built():
    sclip = get_method("sclip").settings(**TINY)
    assert Segmenter(sclip).config["method"] == "sclip"
    assert Segmenter(sclip, sigma=3).method == "sclip"
    assert make_segmenter(method="clearclip").config["method"] == "clearclip"
    with pytest.raises(ValueError, match="method='naclip' given with settings of method 'sclip'"):
        Segmenter(sclip, method="naclip")


def test_a_variant_may_set_the_methods_own_parameters_and_no_others(capsys):
    from naclip.cli import main
    from naclip.evaluation.runner import make_variants

    (variant,) = make_variants([{"resclip_rcs_weights": "2,0.3", "sigma": 4}], "resclip")
    assert variant.name == "resclip_rcs_weights=2,0.3,sigma=4"
    with pytest.raises(ValueError, match="'resclip_rcs_weights' is a parameter of method resclip, not of 'scclip'"):
        make_variants([{"resclip_rcs_weights": "2,0.3"}], "scclip")
    with pytest.raises(ValueError, match="unknown key 'resclip_rcs_weight'; did you mean 'resclip_rcs_weights'"):
        make_variants([{"resclip_rcs_weight": "2,0.3"}], "naclip")
    command = ["eval", "--benchmark", "voc21-sample", "--variant", "resclip_rcs_weights=2,0.3", "--pretrained", "none"]
    assert main(command) == 2
    assert "'resclip_rcs_weights' is a parameter of method resclip, not of 'naclip'" in capsys.readouterr().err


def test_a_parameter_name_means_one_thing(temporary_method, monkeypatch):
    from naclip.heads import HEADS, register_head
    from naclip.methods import Method
    from naclip.settings import Params, option

    @dataclasses.dataclass(frozen=True)
    class Clashing(Params):
        sigma: int = option(3, "method", "an integer sigma")

    monkeypatch.setattr(HEADS, "_items", dict(HEADS._items))  # the heads registered here go with the test
    register_head("test-clash", params=Clashing)(lambda inputs, settings: None)
    with pytest.raises(ValueError, match="its parameter 'sigma' .* is 'naclip''s too"):
        temporary_method(Method("clash", "a sigma of another type", {}, {}, head="test-clash"))

    @dataclasses.dataclass(frozen=True)
    class Shared(Params):
        logit_scale: float = option(1.0, "method", "a second logit scale")

    register_head("test-shared", params=Shared)(lambda inputs, settings: None)
    with pytest.raises(ValueError, match="its parameter 'logit_scale' is a shared setting"):
        temporary_method(Method("shared", "a parameter named as a shared setting", {}, {}, head="test-shared"))
