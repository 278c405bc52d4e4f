"""The human-facing view ``results/<experiment>/``: relative links into the store.

The view holds one link per stage artifact, links to the files people look for first (the
adapter, ``eval.json``, the report), and ``view.json`` naming every key. Rebuilding it is cheap,
and it is only ever replaced by a complete view.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

from pipeline import store

SHORTCUTS = {
    "adapter": ("train", "adapter"),
    "metrics.jsonl": ("train", "metrics.jsonl"),
    "eval.json": ("evaluate", "eval.json"),
    "eval_tables.md": ("evaluate", "tables.md"),
    "control.json": ("control", "control.json"),
}


def _write_view(view_dir: Path, artifacts: Mapping[str, str]) -> None:
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
    os.replace(tmp, view_dir)
    shutil.rmtree(old, ignore_errors=True)


def current(view_dir: Path) -> dict[str, str] | None:
    try:
        return json.loads((view_dir / "view.json").read_text())
    except (OSError, ValueError):
        return None


def refresh_view(view_dir, graph, store_dir, only_if_complete: bool = True) -> bool:
    """Point ``view_dir`` at the graph's artifacts; returns whether it changed.

    With ``only_if_complete`` nothing happens unless every artifact is published.
    """
    view_dir = Path(view_dir)
    artifacts = {name.replace(":", "_"): node.path(store_dir) for name, node in graph.items()}
    if only_if_complete and not all(
        (Path(path) / store.MANIFEST).exists() for path in artifacts.values()
    ):
        return False
    if current(view_dir) == artifacts:
        return False
    _write_view(view_dir, artifacts)
    return True


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write results/<experiment>/ as links into the store")
    parser.add_argument("--view", required=True, type=Path)
    parser.add_argument("--input", action="append", default=[], metavar="NAME=PATH")
    args = parser.parse_args(argv)
    artifacts = dict(pair.split("=", 1) for pair in args.input)
    for path in artifacts.values():
        store.read_manifest(path, verify="fast")
    _write_view(args.view, artifacts)


if __name__ == "__main__":
    main()
