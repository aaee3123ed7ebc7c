"""`naclip segment` end to end on a real sample image, and the text-embedding cache."""

from __future__ import annotations

import re
import subprocess
import sys
import warnings

import numpy as np
import torch
from PIL import Image

from naclip import Segmenter
from naclip.cli import main
from naclip.text import TEMPLATES, QueryCache, encode_queries
from naclip.viz import MARK_COLOUR
from tests.conftest import VOC_IMAGE, make_segmenter


def test_segment_writes_labels_overlay_and_probabilities(tmp_path, capsys):
    code = main(
        [
            "segment",
            str(VOC_IMAGE),
            "--classes",
            "sky; person, people; grass, lawn",
            "--model",
            "naclip-tiny",
            "--pretrained",
            "none",
            "--device",
            "cpu",
            "--pamr-steps",
            "2",
            "--out",
            str(tmp_path),
            "--save-probs",
        ]
    )
    assert code == 0
    labels = Image.open(tmp_path / "sample_0000_labels.png")
    assert labels.mode == "P" and labels.size == (513, 513)
    assert np.asarray(labels).max() < 3
    overlay = Image.open(tmp_path / "sample_0000_overlay.png")
    assert overlay.height == 513 and overlay.width > 513  # the legend sits to the right
    band = np.asarray(overlay.convert("RGB"))[:20, :513].reshape(-1, 3)
    assert (band == MARK_COLOUR).all(1).mean() > 0.8  # random weights: a red band, RANDOM_MARK written on it
    probs = np.load(tmp_path / "sample_0000_probs.npy")
    assert probs.shape == (3, 513, 513)
    np.testing.assert_array_equal(probs.argmax(0), np.asarray(labels))
    out = capsys.readouterr().out
    assert "sample_0000.jpg:" in out and "RANDOM weights" in out


def test_segment_prints_each_image_on_a_line_of_its_own(tmp_path):
    """Per-image lines go above the progress bar (tqdm.write), not onto the bar's line."""
    other = tmp_path / "other.jpg"
    Image.open(VOC_IMAGE).resize((96, 80)).save(other)
    command = [sys.executable, "-m", "naclip", "segment", str(VOC_IMAGE), str(other), "--classes", "sky; grass"]
    command += ["--model", "naclip-tiny", "--pretrained", "none", "--out", str(tmp_path / "seg")]
    done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:]
    lines = re.split(r"[\r\n]", done.stdout)
    for image in (VOC_IMAGE, other):
        assert any(line.startswith(f"{image}: ") for line in lines), done.stdout
    assert "warnings.warn" not in done.stdout and "random_weights_warning(" not in done.stdout  # no source line


def test_segment_reports_bad_input(tmp_path, capsys):
    assert main(["segment", str(tmp_path / "none.jpg"), "--classes", "cat", "--out", str(tmp_path)]) == 2
    assert "none.jpg' does not exist" in capsys.readouterr().err
    assert main(["segment", str(VOC_IMAGE), "--classes", " ; ", "--model", "naclip-tiny", "--pretrained", "none"]) == 2
    assert "holds no class" in capsys.readouterr().err


def test_query_cache_embeds_only_new_names_and_persists(tmp_path, monkeypatch):
    seg = make_segmenter()
    calls = []

    def counting(clip, tokenizer, queries, templates=TEMPLATES):
        calls.append(list(queries))
        return encode_queries(clip, tokenizer, queries, templates)

    monkeypatch.setattr("naclip.text.encode_queries", counting)
    cache = QueryCache("naclip-tiny|test-weights", directory=tmp_path)
    first = cache.embed(seg.clip, seg.tokenizer, ["cat", "dog"])
    second = cache.embed(seg.clip, seg.tokenizer, ["dog", "bird", "cat"])
    assert calls == [["cat", "dog"], ["bird"]]
    torch.testing.assert_close(second[0], first[1])
    assert torch.allclose(first.norm(dim=-1), torch.ones(2))
    reloaded = QueryCache("naclip-tiny|test-weights", directory=tmp_path)
    torch.testing.assert_close(reloaded.embed(seg.clip, seg.tokenizer, ["bird"]), second[1:2])
    assert len(calls) == 2
    assert QueryCache(None, directory=tmp_path).path is None  # no weights key: memory only


def test_text_cache_is_keyed_on_what_the_embeddings_depend_on(tmp_path):
    """Random weights by model and seed, a checkpoint by its content: a rerun, or a copy, finds the cache."""
    random = make_segmenter(cache_dir=str(tmp_path))
    assert random.text_cache.path is not None
    assert make_segmenter(cache_dir=str(tmp_path)).text_cache.path == random.text_cache.path
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reseeded = Segmenter(model="naclip-tiny", pretrained=None, device="cpu", cache_dir=str(tmp_path), seed=1)
    assert reseeded.text_cache.path != random.text_cache.path
    checkpoint = tmp_path / "tiny.pt"
    torch.save(random.clip.float().state_dict(), checkpoint)
    first = make_segmenter(cache_dir=str(tmp_path), pretrained=str(checkpoint))
    copy = tmp_path / "elsewhere" / "tiny-copy.pt"
    copy.parent.mkdir()
    copy.write_bytes(checkpoint.read_bytes())
    assert make_segmenter(cache_dir=str(tmp_path), pretrained=str(copy)).text_cache.path == first.text_cache.path
    state = torch.load(checkpoint, weights_only=True)
    state["logit_scale"] += 1  # other content: another key
    torch.save(state, copy)
    assert make_segmenter(cache_dir=str(tmp_path), pretrained=str(copy)).text_cache.path != first.text_cache.path


def test_query_embedding_is_the_normalised_template_mean():
    seg = make_segmenter()
    templates = TEMPLATES[:3]
    ours = encode_queries(seg.clip, seg.tokenizer, ["red car"], templates)[0]
    with torch.no_grad():
        each = seg.clip.encode_text(seg.tokenizer([t("red car") for t in templates]))
    each = each / each.norm(dim=-1, keepdim=True)
    mean = each.mean(0)
    torch.testing.assert_close(ours, mean / mean.norm())
    assert len(TEMPLATES) == 80 and TEMPLATES[0]("cat") == "a bad photo of a cat."


def test_segment_keeps_every_output_of_images_with_the_same_name(tmp_path, capsys, monkeypatch):
    from tests.helpers_data import write_image

    for folder, seed in [("a", 0), ("b/c", 1)]:
        write_image(tmp_path / folder / "x.png", (16, 20), seed=seed)
    flags = ["--classes", "cat; dog", "--model", "naclip-tiny", "--pretrained", "none", "--device", "cpu"]
    flags += ["--short-side", "32", "--slide-crop", "0", "--pamr-steps", "0"]
    out = tmp_path / "out"
    images = [str(tmp_path / "a/x.png"), str(tmp_path / "b/c/x.png"), str(tmp_path / "a/x.png")]
    assert main(["segment", *images, "--out", str(out), *flags]) == 0
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*.png"))
    assert written == ["a/x_labels.png", "a/x_overlay.png", "b/c/x_labels.png", "b/c/x_overlay.png"]
    assert (out / "a/x_labels.png").read_bytes() != (out / "b/c/x_labels.png").read_bytes()
    capsys.readouterr()

    def no_model(*args, **kwargs):
        raise AssertionError("the model loaded before the outputs were checked")

    monkeypatch.setattr("naclip.segment_cli.Segmenter", no_model)
    write_image(tmp_path / "a/x.jpg", (16, 20))
    assert main(["segment", str(tmp_path / "a/x.png"), str(tmp_path / "a/x.jpg"), "--out", str(out), *flags]) == 2
    assert "would both be written as" in capsys.readouterr().err
    assert main(["segment", str(tmp_path / "a/x.png"), "--out", str(tmp_path / "a/x.png"), *flags]) == 2
    assert "is a file; expected a folder" in capsys.readouterr().err
