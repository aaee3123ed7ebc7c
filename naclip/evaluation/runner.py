"""The evaluation runner behind `naclip eval` and `naclip.evaluation.evaluate`."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

import naclip
from naclip.datasets import BadSample, SegDataset, open_benchmark
from naclip.evaluation import outputs
from naclip.evaluation.distributed import Group, join
from naclip.evaluation.loader import load_prepared
from naclip.evaluation.records import RecordStore
from naclip.io import environment, write_csv, write_json
from naclip.methods import get_method
from naclip.metric import ConfusionMatrix, scores
from naclip.segmenter import Segmenter
from naclip.settings import check_variant

SUMMARY_CSV, PER_CLASS_CSV, PROVENANCE_JSON = "summary.csv", "per_class.csv", "provenance.json"


@dataclass
class Variant:
    """A named set of method-setting overrides (`naclip.settings.VARIANT_KEYS`) evaluated on the shared trunk."""

    name: str
    overrides: dict[str, Any]


@dataclass
class Run:
    """The outcome of one dataset: a confusion matrix per variant, counts, time, skipped images."""

    dataset: SegDataset
    configs: list[dict[str, Any]]
    matrices: list[np.ndarray]
    scored: int
    resumed: int
    seconds: float
    skipped: dict[int, str] = field(default_factory=dict)
    fingerprint: str = ""


def make_variants(variants: Sequence[Mapping[str, Any]] | None) -> list[Variant]:
    """Named variants; a variant's name is its `name` key or its overrides spelled `key=value,...`."""
    result = []
    for variant in variants or [{}]:
        overrides = {key: value for key, value in variant.items() if key != "name"}
        check_variant(overrides)
        name = variant.get("name") or ",".join(f"{k}={_text(v)}" for k, v in overrides.items()) or "default"
        result.append(Variant(str(name), overrides))
    names = [variant.name for variant in result]
    if len(set(names)) != len(names):
        raise ValueError(f"variant names must differ, got {names}")
    return result


def _text(value: Any) -> Any:
    """Config values as CSV-friendly scalars (tuples as '8,16')."""
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return value


def _fingerprint(dataset: SegDataset, configs: list[dict[str, Any]]) -> str:
    """What must match for saved per-image results to be reused: images, labels and method settings."""
    content = {
        "version": naclip.__version__,
        "dataset": dataset.name,
        "items": [(item.name, str(item.image), str(item.mask)) for item in dataset.items],
        "labels": [dataset.num_classes, dataset.reduce_zero_label, dataset.ignore_index],
        "configs": [{k: v for k, v in config.items() if k != "device"} for config in configs],
    }
    return hashlib.sha256(json.dumps(content, default=str).encode()).hexdigest()[:16]


def _prediction_path(root: Path, dataset: SegDataset, variant: Variant, nest: tuple[bool, bool], name: str) -> Path:
    by_dataset, by_variant = nest
    folder = root / dataset.name if by_dataset else root
    folder = folder / variant.name.replace(os.sep, "_") if by_variant else folder
    return folder / f"{name}.png"


def run_dataset(
    dataset: SegDataset,
    variants: list[Variant],
    method: str,
    overrides: Mapping[str, Any],
    group: Group,
    *,
    partial_root: Path | None = None,
    resume: bool = True,
    save_predictions: Path | None = None,
    nest: tuple[bool, bool] = (False, False),
    skip_bad: bool = False,
    workers: int = 0,
    progress: bool = True,
) -> Run:
    """Score every image of `dataset` under each variant; this rank takes its share, ranks sum up."""
    chosen = get_method(method)
    settings = chosen.settings(dataset.protocol, **overrides)
    segmenter = Segmenter(settings.replace(device=str(group.device(settings.device))), method=method)
    segmenter.set_classes(dataset.class_file)
    base = {**segmenter.config, "random_weights": segmenter.random_weights}
    configs = [{**base, **segmenter.variant(variant.overrides).to_dict(("method",))} for variant in variants]
    fingerprint = _fingerprint(dataset, configs)
    store = None
    if partial_root is not None:
        store = RecordStore(partial_root / f"{dataset.name}-{fingerprint}", group.rank)
        if not resume and group.main and store.directory.exists():
            shutil.rmtree(store.directory)
        group.barrier()
    done, bad = store.load(dataset.num_classes, len(variants)) if store else ({}, {})
    if not skip_bad:
        bad = {}
    group.barrier()

    matrices = [ConfusionMatrix(dataset.num_classes, dataset.ignore_index) for _ in variants]
    if group.main:
        for parts in done.values():
            for matrix, part in zip(matrices, parts):
                matrix.add(part)
    todo = group.shard([index for index in range(len(dataset)) if index not in done and index not in bad])
    new_bad: dict[int, str] = {}
    bar = tqdm(total=len(todo), desc=dataset.name, unit="img", disable=not (progress and group.main))
    start = time.perf_counter()
    try:
        for loaded in load_prepared(dataset, todo, settings.short_side, settings.long_side, workers):
            if loaded.error is not None:
                if not skip_bad:
                    raise BadSample(f"{loaded.error} (pass --skip-bad to skip such images)")
                new_bad[loaded.index] = loaded.error
                if store:
                    store.add_bad(loaded.index, loaded.error)
                continue
            predictions = segmenter.predict_variants(
                loaded.tensor, loaded.size, [variant.overrides for variant in variants], probs=False
            )
            parts = [matrix.update(p.labels, loaded.mask) for matrix, p in zip(matrices, predictions)]
            if store:
                store.add(loaded.index, parts)
            if save_predictions is not None:
                name = dataset.items[loaded.index].name
                for variant, prediction in zip(variants, predictions):
                    path = _prediction_path(save_predictions, dataset, variant, nest, name)
                    outputs.save_prediction(prediction.labels, path, dataset.num_classes)
            bar.update()
    finally:
        bar.close()
        if store:
            store.close()
    seconds = time.perf_counter() - start

    stacked = group.sum(np.stack([matrix.matrix for matrix in matrices]))
    new_scored = int(group.sum(np.array([len(todo) - len(new_bad)]))[0])
    seconds = max(group.gather(seconds))
    for part in group.gather(new_bad):
        bad.update(part)
    return Run(dataset, configs, list(stacked), new_scored + len(done), len(done), seconds, bad, fingerprint)


def tables(run: Run, variants: list[Variant], world: int) -> tuple[list[dict], list[dict]]:
    """Tidy rows: one summary row per variant, one per-class row per (variant, class)."""
    summary, per_class = [], []
    new = run.scored - run.resumed
    for variant, config, matrix in zip(variants, run.configs, run.matrices):
        result = scores(matrix)
        summary.append(
            {
                "benchmark": run.dataset.name,
                "variant": variant.name,
                "mIoU": 100 * result.miou,
                "aAcc": 100 * result.aacc,
                "mAcc": 100 * result.macc,
                "n_images": run.scored,
                "n_skipped": len(run.skipped),
                "n_resumed": run.resumed,
                "seconds": run.seconds,
                "images_per_s": new / run.seconds if run.seconds > 0 else float("nan"),
                "num_classes": run.dataset.num_classes,
                **{key: _text(value) for key, value in config.items()},
                "world_size": world,
            }
        )
        for index, name in enumerate(run.dataset.class_names):
            per_class.append(
                {
                    "benchmark": run.dataset.name,
                    "variant": variant.name,
                    "class_index": index,
                    "class_name": name,
                    "IoU": 100 * result.iou[index],
                    "Acc": 100 * result.acc[index],
                    "gt_pixels": int(matrix[index].sum()),
                    "pred_pixels": int(matrix[:, index].sum()),
                }
            )
    return summary, per_class


def evaluate(
    benchmarks: str | SegDataset | Sequence[str | SegDataset],
    variants: Sequence[Mapping[str, Any]] | None = None,
    *,
    data_root: str | os.PathLike | None = None,
    limit: int | None = None,
    out: str | os.PathLike | None = None,
    save_predictions: str | os.PathLike | None = None,
    skip_bad: bool = False,
    resume: bool = True,
    workers: int | None = None,
    progress: bool = True,
    method: str = "naclip",
    **overrides: Any,
) -> pd.DataFrame:
    """Evaluate on benchmarks; returns one tidy row per (benchmark, variant).

    `benchmarks`: keys of `naclip.datasets.PRESETS` (data under `data_root` or $NACLIP_DATA) and/or
    `SegDataset`s (e.g. `folder_dataset(...)`). `method` (a key of `naclip.methods.METHODS`) runs with
    its authors' protocol on each benchmark, class file included (its default protocol on your own
    data); `overrides` are `Settings` fields applied on top. `variants` are overrides of the method
    settings (`naclip.settings.VARIANT_KEYS`, optional `name`) sharing one trunk pass per image, with
    one confusion matrix each.

    The returned frame holds mIoU, aAcc, mAcc (percent), n_images, n_skipped, n_resumed, seconds,
    images_per_s and every configuration key; `frame.attrs["per_class"]` holds per-class IoU/Acc
    (percent) and pixel counts, `frame.attrs["provenance"]` the provenance. With `out`, these are
    written to out/summary.csv, out/per_class.csv, out/provenance.json, and per-image results are kept
    under out/partial/ while running so that an interrupted run resumes (`resume=False` starts over).
    `save_predictions` writes each label map as <dir>[/<benchmark>][/<variant>]/<image name>.png (the
    sub-folders only when several benchmarks or variants are run). Under `torchrun` the images are
    sharded across ranks and the matrices all-reduced; rank 0 writes the outputs.
    """
    specs = [benchmarks] if isinstance(benchmarks, (str, SegDataset)) else list(benchmarks)
    if not specs:
        raise ValueError("no benchmark given")
    named = make_variants(variants)
    chosen = get_method(method)
    chosen.settings(**overrides)  # refuse bad settings before any data is read
    group = join(overrides.get("device", "auto"))
    if workers is None:
        workers = min(4, max(0, (os.cpu_count() or 1) // group.world - 1))
    out_dir = Path(out) if out is not None else None
    predictions_dir = Path(save_predictions) if save_predictions is not None else None
    nest = (len(specs) > 1, len(named) > 1)
    summary, per_class, runs = [], [], []
    try:
        for spec in specs:
            dataset = spec if isinstance(spec, SegDataset) else open_benchmark(spec, data_root)
            dataset = dataset.with_class_file(chosen.class_file(dataset.protocol))
            run = run_dataset(
                dataset.limited(limit),
                named,
                method,
                overrides,
                group,
                partial_root=out_dir / "partial" if out_dir else None,
                resume=resume,
                save_predictions=predictions_dir,
                nest=nest,
                skip_bad=skip_bad,
                workers=workers,
                progress=progress,
            )
            rows, class_rows = tables(run, named, group.world)
            summary += rows
            per_class += class_rows
            runs.append(run)
            if run.skipped and group.main:
                print(f"{dataset.name}: skipped {len(run.skipped)} bad image(s):")
                for reason in run.skipped.values():
                    print(f"  {reason}")
        frame, class_frame = pd.DataFrame(summary), pd.DataFrame(per_class)
        provenance = {
            **environment(),
            "device": str(group.device(overrides.get("device", "auto"))),
            "method": method,
            "authors_protocol": chosen.authors_protocol,
            "world_size": group.world,
            "random_weights": any(config["random_weights"] for run in runs for config in run.configs),
            "runs": [
                {
                    "benchmark": run.dataset.name,
                    "root": str(run.dataset.root),
                    "n_images": run.scored,
                    "n_resumed": run.resumed,
                    "skipped": [
                        {"image": str(run.dataset.items[i].image), "reason": reason}
                        for i, reason in sorted(run.skipped.items())
                    ],
                    "fingerprint": run.fingerprint,
                    "variants": [{"name": v.name, "config": c} for v, c in zip(named, run.configs)],
                }
                for run in runs
            ],
        }
        if out_dir is not None and group.main:
            write_csv(frame, out_dir / SUMMARY_CSV)
            write_csv(class_frame, out_dir / PER_CLASS_CSV)
            write_json(provenance, out_dir / PROVENANCE_JSON)
            for run in runs:
                shutil.rmtree(out_dir / "partial" / f"{run.dataset.name}-{run.fingerprint}", ignore_errors=True)
            with contextlib.suppress(OSError):
                (out_dir / "partial").rmdir()
        group.barrier()
    finally:
        group.close()
    frame.attrs["per_class"] = class_frame
    frame.attrs["provenance"] = provenance
    return frame
