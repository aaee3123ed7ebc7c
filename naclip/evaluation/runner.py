"""The evaluation runner behind `naclip eval` and `naclip.evaluation.evaluate`.

`evaluate` checks the output folders and locks them, then for each dataset `run_dataset` builds the
segmenter, works out what a resumed run already holds (`records.ResumeState`), lets `score` do the
rest, and `outputs` writes the tables and provenance. No input gives a number with success: a run in
which nothing could be scored is an error, and so is one without a single labelled pixel.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from naclip.benchmarks import check_class_names, check_protocol
from naclip.cost import counted_gflops, peak_memory
from naclip.datasets import BadSample, SegDataset, open_benchmark
from naclip.datasets.folder import NO_IMAGE, unpaired_masks
from naclip.evaluation import outputs
from naclip.evaluation.distributed import Group, join
from naclip.evaluation.loader import load_prepared
from naclip.evaluation.outputs import Run
from naclip.evaluation.records import ResumeState, dataset_identity, weights_identity
from naclip.io import (
    code_digest,
    first_missing,
    folder_lock,
    library_versions,
    remove_leftovers,
    remove_unused,
    writable_folder,
)
from naclip.methods import get_method
from naclip.metric import ConfusionMatrix
from naclip.progress import tqdm
from naclip.second_model import weights_key
from naclip.segmenter import Segmenter
from naclip.settings import check_variant


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a run; the message says what was kept and how to resume."""


class NumericalFailure(RuntimeError):
    """A method's scores for an image hold NaN: the image has no label, and the run stops."""


def numerical_failure(image: str | os.PathLike, problem: str) -> str:
    """The one-line message naming the image whose scores are not finite."""
    return (
        f"{image}: {problem}; no label is given to an image whose class scores are not finite (a smaller "
        "--logit-scale, or --dtype float32, may avoid the overflow)"
    )


class OutOfMemory(RuntimeError):
    """Predicting an image ran out of memory: the run stops, naming the image."""


def out_of_memory(error: BaseException) -> bool:
    """Whether `error` is a failed allocation: numpy's MemoryError, torch's CPU allocator, CUDA's or MPS's."""
    if isinstance(error, MemoryError):
        return True
    return isinstance(error, RuntimeError) and any(
        text in str(error) for text in ("can't allocate memory", "out of memory")
    )


@contextlib.contextmanager
def naming_failures(image: str | os.PathLike, size: tuple[int, int]) -> Iterator[None]:
    """A prediction's NaN scores or failed allocation as one error naming `image` of (H, W) `size`."""
    try:
        yield
    except FloatingPointError as error:  # NaN scores: stop rather than label the image class 0
        raise NumericalFailure(numerical_failure(image, str(error))) from None
    except (MemoryError, RuntimeError) as error:
        if not out_of_memory(error):
            raise
        height, width = size
        raise OutOfMemory(
            f"{image}: out of memory predicting this {width}x{height} image ({height * width / 1e6:.0f} megapixels): "
            "its class scores are made at its own size, whatever --short-side and --long-side; expected a smaller "
            "image (downscale it, and its mask for eval) or more free memory"
        ) from None


class NothingScored(ValueError):
    """A dataset gave no number: every image was skipped, or no pixel was labelled."""


@dataclass
class Variant:
    """A named set of method-setting overrides (`naclip.settings.variant_keys`) evaluated on the shared trunk."""

    name: str
    overrides: dict[str, Any]


@dataclass(frozen=True)
class Options:
    """How `run_dataset` runs: where records and predictions go, and what it does with bad images."""

    partial_root: Path | None = None  # records for resuming; None: nothing kept
    resume: bool = True
    save_predictions: Path | None = None
    nest: tuple[bool, bool] = (False, False)  # prediction sub-folders per (benchmark, variant)
    skip_bad: bool = False
    workers: int = 0
    progress: bool = True
    protocol: str = "authors"  # the methods' own protocols, or the shared one (naclip.benchmarks.SHARED)
    class_names: str = "synonyms"  # the class file's lines, or one plain name per class


def make_variants(variants: Sequence[Mapping[str, Any]] | None, method: str = "naclip") -> list[Variant]:
    """Named variants of `method`; a variant's name is its `name` key or its overrides spelled `key=value,...`."""
    result = []
    for variant in variants or [{}]:
        overrides = {key: value for key, value in variant.items() if key != "name"}
        check_variant(overrides, method)
        name = variant.get("name") or ",".join(f"{k}={outputs.text(v)}" for k, v in overrides.items()) or "default"
        result.append(Variant(str(name), overrides))
    names = [variant.name for variant in result]
    if len(set(names)) != len(names):
        raise ValueError(f"variant names must differ, got {names}")
    return result


def run_content(dataset: SegDataset, segmenter: Segmenter, variants: list[Variant]) -> dict[str, Any]:
    """Everything that shapes a per-image record, hashed into the key under which records are reused:
    library versions, naclip's code (`code_digest`), the dataset (items, files, label conventions), the
    class lines, the weights (a second model's too), the method, the device type and precision, and every
    setting of each variant (the method's own parameters and the seed included)."""
    settings = [segmenter.variant(variant.overrides) for variant in variants]
    return {
        "versions": library_versions(),
        "code": code_digest(),
        "dataset": dataset_identity(dataset),
        "class_lines": list(segmenter.classes.lines),
        "weights": weights_identity(segmenter.settings.pretrained),
        "second_models": {name: weights_key(weights) for name, weights in segmenter.second_weights.items()},
        "method": segmenter.method,
        "device": [segmenter.device.type, str(segmenter.dtype)],
        "variants": [
            {
                "name": variant.name,
                **{k: v for k, v in s.to_dict(("backbone", "protocol", "method")).items() if k != "device"},
            }
            for variant, s in zip(variants, settings)
        ],
    }


def run_dataset(
    dataset: SegDataset,
    variants: list[Variant],
    method: str,
    overrides: Mapping[str, Any],
    group: Group,
    options: Options,
) -> Run:
    """Score every image of `dataset` under each variant; this rank takes its share, ranks sum up."""
    device = str(group.device(get_method(method).settings(dataset.protocol, options.protocol, **overrides).device))
    segmenter = Segmenter.for_benchmark(
        dataset.protocol,
        method,
        classes=dataset.class_file,
        protocol=options.protocol,
        class_names=options.class_names,
        **{**overrides, "device": device},
    )
    base = {
        **segmenter.config,
        "protocol": options.protocol,
        "class_names": options.class_names,
        "random_weights": segmenter.random_weights,
    }
    configs = [{**base, **segmenter.variant(variant.overrides).to_dict(("method",))} for variant in variants]
    state = ResumeState(options.partial_root, dataset.name, run_content(dataset, segmenter, variants), group.rank)

    def files(index: int) -> list[Path]:
        if options.save_predictions is None:
            return []
        name = dataset.items[index].name
        return [
            outputs.prediction_path(options.save_predictions, dataset.name, v.name, options.nest, name)
            for v in variants
        ]

    if group.main:  # before `begin`, whose barrier holds the other ranks back
        for folder in {path.parent for index in range(len(dataset)) for path in files(index)}:
            remove_leftovers(folder, "*.png")
    for note in state.begin(group, options.resume, dataset.num_classes, len(variants), files):
        print(f"note: {note}", file=sys.stderr)
    skipped = state.bad if options.skip_bad else {}
    matrices = [ConfusionMatrix(dataset.num_classes, dataset.ignore_index) for _ in variants]
    for parts in state.matrices.values():
        for matrix, part in zip(matrices, parts):
            matrix.add(part)
    todo = group.shard([i for i in range(len(dataset)) if i not in state.done and i not in skipped])
    start = time.perf_counter()
    try:
        shown = dataclasses.replace(options, progress=options.progress and group.main)
        with peak_memory(segmenter.device) as memory:
            new_bad, gflops = score(segmenter, dataset, variants, todo, matrices, state, files, shown)
    except KeyboardInterrupt:
        raise Interrupted(_kept(dataset, state)) from None
    finally:
        state.close()
    seconds = max(group.gather(time.perf_counter() - start))
    counted = [value for value in group.gather(gflops) if value is not None]  # the first rank that scored one
    stacked = group.sum(np.stack([matrix.matrix for matrix in matrices]))
    new_scored = int(group.sum(np.array([len(todo) - len(new_bad)]))[0])
    for part in group.gather(new_bad):
        skipped.update(part)
    run = Run(
        dataset,
        [variant.name for variant in variants],
        configs,
        list(stacked),
        scored=new_scored + len(state.done),
        resumed=len(state.done),
        seconds=seconds,
        skipped=skipped,
        key=state.key,
        records=state.directory,
        gflops=counted[0] if counted else float("nan"),
        peak_memory_mib=max(group.gather(memory.mib)),
        peak_memory_kind=memory.kind,
    )
    check_scored(run)
    return run


def score(
    segmenter: Segmenter,
    dataset: SegDataset,
    variants: list[Variant],
    todo: list[int],
    matrices: list[ConfusionMatrix],
    state: ResumeState,
    files: Callable[[int], list[Path]],
    options: Options,
) -> tuple[dict[int, str], float | None]:
    """The scoring loop: predict each image of `todo`, write its PNGs, add it to `matrices`, record it.

    The PNGs are written before the record, so a recorded image always has them. Returns the images
    skipped as bad (with `skip_bad`; otherwise the first bad image raises BadSample), and the GFLOPs of
    the first image's prediction (every variant of it), counted while it is made (None: no image scored).
    """
    settings = segmenter.settings
    bad: dict[int, str] = {}
    gflops = None
    bar = tqdm(total=len(todo), desc=dataset.name, unit="img", disable=not options.progress)
    try:
        loaded_images = load_prepared(
            dataset,
            todo,
            settings.short_side,
            settings.long_side,
            options.workers,
            segmenter.min_side,
            segmenter.needs_original,
        )
        for loaded in loaded_images:
            if loaded.error is not None:
                if not options.skip_bad:
                    raise BadSample(f"{loaded.error} (pass --skip-bad to skip such images)")
                bad[loaded.index] = loaded.error
                state.record_bad(loaded.index, loaded.error)
                continue
            with naming_failures(dataset.items[loaded.index].image, loaded.size):

                def predict(loaded: Any = loaded) -> list:
                    return segmenter.predict_variants(
                        loaded.tensor,
                        loaded.size,
                        [variant.overrides for variant in variants],
                        probs=False,
                        original=loaded.original,
                    )

                if gflops is None:  # counted once per run, on the first image; the text is embedded before
                    segmenter._query_features()
                    predictions, gflops = counted_gflops(predict)
                else:
                    predictions = predict()
            written = {
                path: outputs.save_prediction(prediction.labels, path, dataset.num_classes)
                for path, prediction in zip(files(loaded.index), predictions)
            }
            parts = [matrix.update(p.labels, loaded.mask) for matrix, p in zip(matrices, predictions)]
            state.record(loaded.index, parts, written)
            bar.update()
    finally:
        bar.close()
    return bad, gflops


def _kept(dataset: SegDataset, state: ResumeState) -> str:
    if state.directory is None:
        return f"interrupted during {dataset.name}; nothing was kept (no output folder)"
    return (
        f"interrupted during {dataset.name}: {len(state.done) + state.written} of its {len(dataset)} images are "
        f"scored and kept in {state.directory}; rerun the same command to resume"
    )


def check_scored(run: Run) -> None:
    """NothingScored when a dataset has no image scored or no labelled pixel: its numbers would be NaN."""
    name = run.dataset.name
    if run.scored == 0:
        first = next(iter(run.skipped.values()), "")
        raise NothingScored(
            f"{name}: none of its {len(run.dataset)} images could be scored ({len(run.skipped)} skipped as bad"
            f"{'; first: ' + first if first else ''}); expected at least one readable image with its mask"
        )
    if not any(matrix.sum() for matrix in run.matrices):
        raise NothingScored(
            f"{name}: the masks of its {run.scored} scored images hold no labelled pixel (every value is the "
            f"ignore index {run.dataset.ignore_index}); expected class indices 0..{run.dataset.num_classes - 1}"
        )


def check_apart(dataset: SegDataset, folders: list[tuple[Path, str]]) -> None:
    """ValueError when an output folder is, lies inside or contains one of `dataset`'s inputs.

    Predictions written into the masks folder would overwrite the ground truth they are scored on.
    """
    for folder, what in folders:
        mine = folder.resolve()
        for kind, path in dataset.inputs():
            theirs = path.resolve()
            if mine == theirs or theirs in mine.parents:
                relation = "is" if mine == theirs else "lies inside"
            elif mine in theirs.parents:
                relation = "contains"
            else:
                continue
            raise ValueError(
                f"{what} {str(folder)!r} {relation} the {kind} {str(theirs)!r} of {dataset.name}; expected a "
                "folder apart from the data it scores (outputs there could overwrite the ground truth)"
            )


@contextlib.contextmanager
def _locked(folders: list[tuple[Path, str]], group: Group) -> Iterator[None]:
    """Rank 0 locks each output folder for the run; a refusal (another run holds one) is raised on every rank."""
    with contextlib.ExitStack() as stack:
        error = None
        if group.main:
            try:
                for folder, what in folders:
                    stack.enter_context(folder_lock(folder, what))
            except (RuntimeError, ValueError) as refused:
                error = refused
        errors = group.gather(str(error) if error else None)
        if error is not None:
            raise error
        if errors[0] is not None:
            raise RuntimeError(errors[0])
        yield


def _report_unpaired(name: str, unpaired: Mapping[Path, str]) -> None:
    """One line for the masks without an image, one for those whose image is not read for its suffix."""
    orphans = [mask for mask, why in unpaired.items() if why == NO_IMAGE]
    unread = {mask: why for mask, why in unpaired.items() if why != NO_IMAGE}
    if orphans:
        print(f"{name}: {len(orphans)} mask(s) have no image and are not scored, e.g. {orphans[0]}")
    if unread:
        mask, why = next(iter(unread.items()))
        print(
            f"{name}: {len(unread)} image(s) are not read for their suffix, their masks not scored, e.g. {mask}: {why}"
        )


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
    protocol: str = "authors",
    class_names: str = "synonyms",
    **overrides: Any,
) -> pd.DataFrame:
    """Evaluate on benchmarks; returns one tidy row per (benchmark, variant).

    `benchmarks`: keys of `naclip.datasets.PRESETS` (data under `data_root` or $NACLIP_DATA) and/or
    `SegDataset`s (e.g. `folder_dataset(...)`). `method` (a key of `naclip.methods.METHODS`) runs with
    its authors' protocol on each benchmark, class file included (its default protocol on your own
    data); `overrides` are `Settings` fields applied on top. `variants` are overrides of the method
    settings (`naclip.settings.variant_keys(method)`, optional `name`) sharing one trunk pass per image, with
    one confusion matrix each.

    The returned frame holds mIoU, aAcc, mAcc (percent), n_images, n_skipped, n_resumed, seconds,
    images_per_s (NaN when every image was resumed) and every configuration key;
    `frame.attrs["per_class"]` holds per-class IoU/Acc (percent) and pixel counts,
    `frame.attrs["provenance"]` the provenance. `protocol` is ``authors`` (each method's own) or ``shared``
    (`naclip.benchmarks.SHARED`, the same protocol fields and class files for every method); `class_names` is
    ``synonyms`` (the class file's lines) or ``plain`` (one name per class). The cost columns: s_per_image,
    peak_memory_mib (CUDA's allocator or the process's resident set) and gflops (one prediction of the
    first image scored, counted by torch's FlopCounterMode while it is made). With `out`, these are written to
    out/summary.csv, out/per_class.csv, out/provenance.json, and per-image results are kept under out/partial/ while
    running so that an interrupted run resumes (`resume=False` starts over); `out` and
    `save_predictions` are locked against other runs while this one writes them.
    `save_predictions` writes each label map as <dir>[/<benchmark>][/<variant>]/<image name>.png (the
    sub-folders only when several benchmarks or variants are run); a resumed run writes any that are
    missing. Under `torchrun` the images are sharded across ranks and the matrices all-reduced; rank 0
    writes the outputs. Raises NothingScored when a dataset gives no number, Interrupted on Ctrl-C.
    """
    specs = [benchmarks] if isinstance(benchmarks, (str, SegDataset)) else list(benchmarks)
    if not specs:
        raise ValueError("no benchmark given")
    named = make_variants(variants, method)
    chosen = get_method(method)
    chosen.settings(None, check_protocol(protocol), **overrides)  # refuse bad settings before any data is read
    check_class_names(class_names)
    made = [first_missing(path) for path in (out, save_predictions) if path is not None]  # removed if nothing ran
    group = join(overrides.get("device", "auto"))
    summary, per_class, runs = [], [], []
    finished = False
    try:
        out_dir = writable_folder(out, "output folder") if out is not None else None
        predictions_dir = None
        if save_predictions is not None:
            predictions_dir = writable_folder(save_predictions, "predictions folder")
        folders = [(out_dir, "output folder")] if out_dir else []
        if predictions_dir is not None and (out_dir is None or predictions_dir.resolve() != out_dir.resolve()):
            folders.append((predictions_dir, "predictions folder"))
        if workers is None:
            workers = min(4, max(0, (os.cpu_count() or 1) // group.world - 1))
        options = Options(
            partial_root=out_dir / "partial" if out_dir else None,
            resume=resume,
            save_predictions=predictions_dir,
            nest=(len(specs) > 1, len(named) > 1),
            skip_bad=skip_bad,
            workers=workers,
            progress=progress,
            protocol=protocol,
            class_names=class_names,
        )
        datasets = [spec if isinstance(spec, SegDataset) else open_benchmark(spec, data_root) for spec in specs]
        for dataset in datasets:
            check_apart(dataset, folders)
        with _locked(folders, group):
            for dataset in datasets:
                dataset = dataset.with_class_file(chosen.class_file(dataset.protocol, protocol))
                unpaired = unpaired_masks(dataset)
                if group.main:
                    _report_unpaired(dataset.name, unpaired)
                run = run_dataset(dataset.limited(limit), named, method, overrides, group, options)
                run.unpaired_masks = [str(path) for path in unpaired]
                rows, class_rows = outputs.tables(run, group.world)
                summary += rows
                per_class += class_rows
                runs.append(run)
                if run.skipped and group.main:
                    print(f"{dataset.name}: skipped {len(run.skipped)} bad image(s):")
                    for reason in run.skipped.values():
                        print(f"  {reason}")
            frame, class_frame = pd.DataFrame(summary), pd.DataFrame(per_class)
            facts = outputs.provenance(
                runs,
                device=str(group.device(overrides.get("device", "auto"))),
                method=method,
                protocol=protocol,
                class_names=class_names,
                authors_protocol=chosen.authors_protocol,
                world_size=group.world,
            )
            if out_dir is not None and group.main:
                outputs.write_results(out_dir, frame, class_frame, facts)
                for run in runs:
                    if run.records is not None:
                        shutil.rmtree(run.records, ignore_errors=True)
                with contextlib.suppress(OSError):
                    (out_dir / "partial").rmdir()
            group.barrier()
        finished = True
    finally:
        group.close()
        if not finished and group.main:
            for folder in made:
                remove_unused(folder)
    frame.attrs["per_class"] = class_frame
    frame.attrs["provenance"] = facts
    return frame
