"""The human-facing view ``results/<experiment>/``: relative links into the store.

The view holds one link per stage artifact, links to the files people look for first (the
adapter, ``eval.json``, the report), and ``view.json`` naming every key. Rebuilding it is cheap,
and it is only ever replaced by a complete view. Each view checked or written is recorded in the
store (``pipeline.core.usage``), so that ``gc`` keeps what it wants.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

from pipeline.core import stage, store, usage
from pipeline.core.faults import fault_point

SHORTCUTS = {
    "adapter": ("train", "adapter"),
    "metrics.jsonl": ("train", "metrics.jsonl"),
    "eval.json": ("evaluate", "eval.json"),
    "eval_tables.md": ("evaluate", "tables.md"),
    "curve.json": ("reading_curve", "curve.json"),
    "control.json": ("control", "control.json"),
    "probes.json": ("probes", "probes.json"),
    "lens.json": ("lens", "lens.json"),
    "explain.json": ("explain", "explain.json"),
}


def _write_view(view_dir: Path, artifacts: Mapping[str, str], fault: str | None = None) -> None:
    """Replace ``view_dir`` by a new view; ``fault`` names a test-only fault point for the moment
    when the old view is gone and the new one not yet in place."""
    tmp = view_dir.with_name(view_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    stage_of = {}
    for name, artifact in artifacts.items():
        target = Path(artifact)
        os.symlink(os.path.relpath(target, view_dir), tmp / name)
        stage_of[target.parent.name] = target
    for link, (stage_name, rel) in SHORTCUTS.items():
        if stage_name in stage_of and (stage_of[stage_name] / rel).exists():
            os.symlink(os.path.relpath(stage_of[stage_name] / rel, view_dir), tmp / link)
    (tmp / "view.json").write_text(json.dumps(dict(artifacts), indent=2, sort_keys=True) + "\n")
    old = view_dir.with_name(view_dir.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if view_dir.exists() or view_dir.is_symlink():
        os.replace(view_dir, old)
    if fault:
        fault_point(fault)
    os.replace(tmp, view_dir)
    shutil.rmtree(old, ignore_errors=True)


def current(view_dir: Path) -> dict[str, str] | None:
    try:
        return json.loads((view_dir / "view.json").read_text())
    except (OSError, ValueError):
        return None


def refresh_view(
    view_dir, graph, store_dir, only_if_complete: bool = True, record: bool = True
) -> bool:
    """Point ``view_dir`` at the graph's artifacts; returns whether it changed.

    With ``only_if_complete`` a view whose artifacts are not all published yet is left as it is,
    but marked out of date. With ``record`` (a view the run builds), the store records that the
    view wants the graph's artifacts (``pipeline.core.usage``).
    """
    view_dir = Path(view_dir)
    # Spelled as the view command reads its --input paths, so that view.json compares equal.
    artifacts = {
        name.replace(":", "_"): str(Path(node.path(store_dir))) for name, node in graph.items()
    }
    if record:
        # Before the artifacts are looked at: a `gc` under way finishes first, and one that
        # starts later keeps them.
        usage.record_view(view_dir, artifacts.values(), store_dir)
    complete = all((Path(path) / store.MANIFEST).exists() for path in artifacts.values())
    if current(view_dir) == artifacts and complete:
        # Dated now: newer than the store folder (the view rule's other input), and current
        # again after a reverted setting.
        _set_mtime(view_dir, None)
        return False
    if only_if_complete and not complete:
        # Not built yet, or an artifact the view links to was removed from the store: dated to
        # the epoch, the view is rebuilt after the artifacts (a current date would hide them).
        mark_outdated(view_dir)
        return False
    _write_view(view_dir, artifacts)
    return True


OUTDATED = 1.0
"""The mtime of a stale view: the epoch plus one second (Snakemake reads an mtime of 0 as none)."""


def mark_outdated(view_dir: Path) -> None:
    """Date a stale view to the epoch, so that a scheduler going by mtimes rebuilds it.

    Snakemake, with only the mtime trigger, reruns a job whose output exists only when an input
    that exists is newer; the artifacts a stale view should point to may not exist yet, so the
    view itself must look old, and the view rule also reads the store folder, which always exists.
    A view that is current again (a reverted setting) gets today's date back.
    """
    _set_mtime(view_dir, OUTDATED)


def _set_mtime(view_dir: Path, when: float | None) -> None:
    """Set the view's mtime to ``when`` (None: now)."""
    # Snakemake dates a directory output by its .snakemake_timestamp file, if it has one.
    for path in (view_dir / ".snakemake_timestamp", view_dir):
        if path.exists():
            os.utime(path, None if when is None else (when, when), follow_symlinks=False)


def main(argv: list[str] | None = None) -> None:
    """``python -m pipeline.core.view --out results/<experiment> --input NAME=ARTIFACT ...``:
    write the view as links to the given artifacts (each must be published)."""
    args = stage.parse_stage_args(argv, prog="python -m pipeline.core.view", keyed=False)
    artifacts = {name: str(path) for name, path in args.inputs.items()}
    for store_dir in {path.parent.parent for path in args.inputs.values()}:
        usage.record_view(args.out, artifacts.values(), store_dir)
    for path in artifacts.values():
        store.read_manifest(path, verify="fast")
    fault_point("view.start")
    _write_view(args.out, artifacts, fault="view.swap")
    fault_point("view.published")


if __name__ == "__main__":
    main()
