"""`naclip workbook run`: resolve studies and a profile into runs, execute them, rebuild the index."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from naclip.workbook.index import write_index
from naclip.workbook.params import (
    Run,
    apply_profile,
    discover_studies,
    expand,
    is_study_file,
    load_profile,
    load_study,
)
from naclip.workbook.runner import Executor, Report, execute_runs, notebook_kernel, papermill_executor

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PROFILE = "samples"
FALLBACK_PROFILE = "smoke"


def _params_file(target: str, params_dir: Path, kind: str, known: list[str]) -> Path:
    """A params file given by path or by its name in `params_dir`; FileNotFoundError listing `known`."""
    path = Path(target)
    if path.suffix not in (".yaml", ".yml"):
        path = params_dir / f"{target}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"no {kind} {target!r} ({path} does not exist); {kind}s: {', '.join(known)}")
    return path


def resolve_profile(profile: str, params_dir: Path) -> tuple[str, dict]:
    """A profile's name and overrides, from a name in `params_dir` or a file path."""
    names = sorted(p.stem for p in params_dir.glob("*.yaml") if not is_study_file(p))
    path = _params_file(profile, params_dir, "profile", names)
    return path.stem, load_profile(path)


def plan(targets: Sequence[str], profile: dict, params_dir: Path) -> list[Run]:
    """The runs for `targets` (study names or study files; every study when empty) under `profile`."""
    studies = discover_studies(params_dir)
    if targets:
        known = [s.name for s in studies]
        studies = [load_study(_params_file(t, params_dir, "study", known)) for t in targets]
    return [run for study in studies for run in expand(apply_profile(study, profile))]


def weights_error(model: str, pretrained: str | None) -> str | None:
    """Why `model`/`pretrained` weights cannot be loaded here (None when they can)."""
    from naclip.backbone import load_clip

    try:
        load_clip(model, pretrained)
    except (RuntimeError, OSError) as error:
        return str(error)
    return None


def regenerate(
    targets: Sequence[str] = (),
    profile: str | None = None,
    results: Path | None = None,
    force: bool = False,
    params_dir: Path = ROOT / "params",
    notebooks: Path = ROOT / "notebooks",
    executor: Executor | None = None,
    log: Callable[[str], None] = print,
) -> Report:
    """Run the studies and rebuild ``index.md``.

    Without `profile`, the embedded samples are run with the real weights; when those cannot be loaded
    (offline, no cached weights) the smoke profile runs instead, under a banner in every output.
    """
    results = Path(results or ROOT / "results")
    name, overrides = resolve_profile(profile or DEFAULT_PROFILE, params_dir)
    banner = note = None
    if profile is None:
        model = (overrides.get("parameters") or {}).get("model", "ViT-B-16")
        pretrained = (overrides.get("parameters") or {}).get("pretrained", "openai")
        error = weights_error(model, pretrained)
        if error:
            banner = (
                f"RANDOM WEIGHTS — not a result: the {model}/{pretrained} weights could not be loaded, so the "
                f"'{FALLBACK_PROFILE}' profile ran instead (tiny random model). Reason: {error}"
            )
            note = f"Ran the '{FALLBACK_PROFILE}' profile: the {model}/{pretrained} weights could not be loaded."
            print(f"\n{'!' * 100}\n{banner}\n{'!' * 100}\n", file=sys.stderr)
            name, overrides = resolve_profile(FALLBACK_PROFILE, params_dir)
    runs = plan(targets, overrides, params_dir)
    results.mkdir(parents=True, exist_ok=True)
    with notebook_kernel() as kernel:
        report = execute_runs(
            runs, results, notebooks, executor or papermill_executor(kernel),
            force=force, profile=name, note=note, log=log,
        )
    index = write_index(results, banner)
    log(f"index: {index}")
    return report
