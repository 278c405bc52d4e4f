"""``latentqa-store du|gc|verify``: keeping a store over months (README, "Keeping the store").

``du`` shows where the space goes: per stage, and per artifact with the views that name it and
when it was last used. ``gc`` lists (by default) or removes (``--delete``) what nothing needs:
see ``pipeline.core.gc`` for what it keeps. ``verify`` checks every artifact against its manifest
(sizes; sha256 with ``--full``) and, with ``--repair``, moves the damaged ones and those built from
them aside, so that the next run rebuilds them.

The store is ``--store``, else the ``store:`` of ``--config`` (default ``config/config.yaml``),
else ``results/store``, relative to the working directory, as for a run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterable
from pathlib import Path

from pipeline.core import gc, inventory, usage, verify
from pipeline.core.errors import InputError
from pipeline.core.experiments import DEFAULT_CONFIG, load_config, load_experiments, store_of
from pipeline.core.inventory import ARTIFACT, STAGING, Entry, View, size_text, when_text


def resolve_store(args: argparse.Namespace) -> Path:
    if args.store is not None:
        return args.store
    config = args.config or (DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None)
    return Path(store_of(load_config(config) if config else {}))


def keep_from_config(args: argparse.Namespace, store_dir: Path) -> dict[str, str]:
    """The artifacts of the ``--keep`` experiments' current graphs, with why."""
    if not args.keep:
        return {}
    config_path = args.config or DEFAULT_CONFIG
    try:
        experiments = load_experiments(load_config(config_path), args.root, args.keep)
    except ValueError as exc:  # a setting that fits no stage: an error to print, not a traceback
        raise InputError(f"{config_path}: {exc}") from exc
    graphs = experiments.graphs_of(args.keep, str(config_path))
    keep = {}
    for experiment, graph in graphs.items():
        for node in graph.values():
            keep.setdefault(f"{node.stage}/{node.key}", f"in the graph of --keep {experiment}")
    return keep


def _views(store_dir: Path, records: list[dict]) -> list[View]:
    return inventory.find_views(store_dir, records, [Path.cwd()])


def _referenced(views: Iterable[View], cwd: Path) -> tuple[dict[str, list[str]], dict]:
    shown: dict[str, list[str]] = {}
    wanted: dict[str, list[str]] = {}
    for view in views:
        label = inventory.view_label(view, cwd)
        for name in view.shown:
            shown.setdefault(name, []).append(label)
        for name in view.wants - view.shown:
            wanted.setdefault(name, []).append(label)
    return shown, wanted


def du(args: argparse.Namespace) -> int:
    store_dir = resolve_store(args)
    entries = inventory.scan(store_dir)
    records = usage.read(store_dir)
    views = _views(store_dir, records)
    shown, wanted = _referenced(views, Path.cwd())
    last = usage.last_wanted(records)
    stages: dict[str, dict[str, int]] = {}
    rows = []
    for entry in entries:
        totals = stages.setdefault(entry.stage, {"artifacts": 0, "size": 0})
        totals["artifacts"] += entry.kind == ARTIFACT
        totals["size"] += entry.size
        rows.append(
            {
                "kind": entry.kind,
                "name": entry.name,
                "path": str(entry.path),
                "size": entry.size,
                "last_used": gc.last_used(entry, last),
                "views": sorted(shown.get(entry.name, [])),
                "wanted_by": sorted(wanted.get(entry.name, [])),
                "held": entry.held,
            }
        )
    total = sum(entry.size for entry in entries)
    if args.json:
        print(
            json.dumps({"store": str(store_dir), "total": total, "stages": stages, "entries": rows})
        )
        return 0
    print(f"{store_dir}: {size_text(total)} in {len(entries)} folders")
    print(f"\n{'stage':<20} {'artifacts':>9} {'size':>10}")
    for stage, totals in sorted(stages.items(), key=lambda item: -item[1]["size"]):
        print(f"{stage:<20} {totals['artifacts']:>9} {size_text(totals['size']):>10}")
    print(f"\n{'artifact':<38} {'size':>10}  {'last used':<16}  views")
    for row in sorted(rows, key=lambda r: (r["name"].split("/")[0], -r["size"])):
        name = row["name"] if row["kind"] == ARTIFACT else f"{row['name']} [{_kind_label(row)}]"
        views_text = ", ".join(row["views"]) or "-"
        if row["wanted_by"]:
            views_text += f"; wanted by {', '.join(row['wanted_by'])}"
        print(
            f"{name:<38} {size_text(row['size']):>10}  {when_text(row['last_used']):<16}  "
            f"{views_text}"
        )
    return 0


def _kind_label(row: dict) -> str:
    if row["kind"] == STAGING:
        return "staging, running" if row["held"] else "staging, stale"
    return row["kind"]


def collect(args: argparse.Namespace) -> int:
    store_dir = resolve_store(args)
    keep = keep_from_config(args, store_dir)
    older = None if args.older_than is None else args.older_than * 86400.0
    now = time.time()
    if not store_dir.is_dir():
        raise InputError(f"{store_dir}: no such store")
    if not args.delete:
        records = usage.read(store_dir)
        entries = inventory.scan(store_dir)
        plan = gc.plan(entries, _views(store_dir, records), records, keep, now, older)
        return _report_gc(args, store_dir, plan, None)
    with usage.locked(store_dir) as handle:
        handle.seek(0)
        records = usage.parse(handle.read())
        entries = inventory.scan(store_dir)
        views = _views(store_dir, records)
        plan = gc.plan(entries, views, records, keep, now, older)
        outcome = gc.remove(plan.remove)
        remaining = {e.name for e in inventory.scan(store_dir) if e.kind == ARTIFACT}
        forget = {
            str(v.path)
            for v in views
            if not v.exists and (v.checked is None or now - v.checked >= gc.PENDING_S)
        }
        usage.compact(handle, store_dir, records, remaining, forget)
    return _report_gc(args, store_dir, plan, outcome)


def _report_gc(args, store_dir: Path, plan: gc.Plan, outcome) -> int:
    stayed = {id(entry): why for entry, why in outcome or () if why}
    rows = [
        {
            "kind": entry.kind,
            "name": entry.name,
            "path": str(entry.path),
            "size": entry.size,
            "last_used": plan.last_used.get(entry.path),
            "why": gc.KINDS[entry.kind],
            "stayed": stayed.get(id(entry)),
        }
        for entry in plan.remove
    ]
    freed = sum(r["size"] for r in rows if not r["stayed"])
    if args.json:
        print(
            json.dumps(
                {
                    "store": str(store_dir),
                    "deleted": outcome is not None,
                    "remove": rows,
                    "freed": freed,
                    "kept": plan.kept,
                }
            )
        )
        return 0
    if not rows:
        print(f"gc: {store_dir}: nothing to remove ({len(plan.kept)} artifacts in use)")
        return 0
    verb = "removed" if outcome is not None else "would remove"
    print(f"gc: {store_dir}: {verb} {len(rows) - len(stayed)} folders, {size_text(freed)}")
    for row in rows:
        note = f" (kept: {row['stayed']})" if row["stayed"] else ""
        print(
            f"  {row['name']:<38} {size_text(row['size']):>10}  last used "
            f"{when_text(row['last_used'])}  {row['why']}{note}"
        )
    if outcome is None:
        print("dry run: `latentqa-store gc --delete` removes them")
    return 0


def check(args: argparse.Namespace) -> int:
    store_dir = resolve_store(args)
    entries = inventory.scan(store_dir)
    damaged = verify.check_all(entries, full=args.full)
    checked = [e for e in entries if e.kind == ARTIFACT]
    how = "sha256" if args.full else "sizes; --full checks sha256"
    built_from = verify.dependants(entries, {d.entry.name for d in damaged})
    moved: list[Entry] = []
    marked: list[Path] = []
    if args.repair and damaged:
        moved = [d.entry for d in damaged] + built_from
        marked = verify.repair(store_dir, moved, _views(store_dir, usage.read(store_dir)))
    if args.json:
        print(
            json.dumps(
                {
                    "store": str(store_dir),
                    "checked": len(checked),
                    "full": args.full,
                    "damaged": {d.entry.name: d.problems for d in damaged},
                    "built_from_damaged": [e.name for e in built_from],
                    "moved": [e.name for e in moved],
                    "views_outdated": [str(p) for p in marked],
                }
            )
        )
        return 1 if damaged else 0
    size = sum(e.size for e in checked)
    print(f"verify: {store_dir}: {len(checked)} artifacts, {size_text(size)} checked ({how})")
    for damage in damaged:
        for problem in damage.problems:
            print(f"damaged: {damage.entry.path}: {problem}")
    if not damaged:
        print("verify: nothing damaged")
        return 0
    names = ", ".join(e.name for e in built_from) or "none"
    if not args.repair:
        print(
            f"verify: {len(damaged)} damaged; built from them: {names}; `latentqa-store verify "
            "--repair` moves them all aside so that the next run rebuilds them"
        )
        return 1
    print(
        f"verify: moved {len(moved)} artifacts to {store_dir / inventory.DAMAGED} "
        f"({len(damaged)} damaged, {len(built_from)} built from them: {names}); the next run "
        "rebuilds them"
    )
    for view in marked:
        print(f"verify: {view} is out of date until then")
    return 1


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="latentqa-store", description="Keep a content-addressed store: du, gc, verify"
    )
    commands = top.add_subparsers(dest="command", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        sub.add_argument("--store", type=Path, help="the store (default: the config's store:)")
        sub.add_argument(
            "--config", type=Path, help=f"the config naming the store (default: {DEFAULT_CONFIG})"
        )
        sub.add_argument("--json", action="store_true", help="print one JSON object")
        return sub

    command("du", "sizes per stage and artifact, the views naming each, when each was last used")
    sub = command("gc", "list (default) or remove what no view, running stage or --keep needs")
    mode = sub.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="list only (the default)")
    mode.add_argument("--delete", action="store_true", help="remove what is listed")
    sub.add_argument(
        "--keep",
        nargs="+",
        default=[],
        metavar="EXPERIMENT",
        help="also keep everything these experiments' current graphs (from the config) need",
    )
    sub.add_argument(
        "--older-than", type=float, metavar="DAYS", help="only what was last used this long ago"
    )
    sub.add_argument(
        "--root", type=Path, default=Path("."), help="the repository whose data --keep reads"
    )
    sub = command("verify", "check every artifact against its manifest")
    sub.add_argument("--full", action="store_true", help="check sha256, not only sizes")
    sub.add_argument(
        "--repair",
        action="store_true",
        help="move damaged artifacts, and those built from them, aside (the next run rebuilds)",
    )
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    handler = {"du": du, "gc": collect, "verify": check}[args.command]
    try:
        return handler(args)
    except InputError as exc:
        print(
            f"latentqa-store {args.command}: error: {' '.join(str(exc).split())}", file=sys.stderr
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
