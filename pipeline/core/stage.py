"""The command line every stage shares: ``python -m pipeline.<concept>.<stage> --out DIR ...``.

A stage is a typed params dataclass plus ``run(params, inputs, workdir, info)``. This module parses
the arguments, builds the dataclass (rejecting unknown fields), locks the staging folder, and
publishes ``workdir`` into the store atomically when ``run`` returns. The process dies with its
parent (the job's shell), so a killed job leaves no stage running. ``info`` is a dict the stage
may fill with summary figures that go into the manifest.

This module does not import the stage registry (``pipeline.core.stages``): every stage imports
this module, so the registry would enter every stage's code digest, and registering a new stage
would change the key of every artifact already built.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import operator
import sys
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from pipeline.core import disk, staging, store
from pipeline.core.errors import InputError
from pipeline.core.faults import fault_point
from pipeline.core.lifeline import die_with_parent

T = TypeVar("T")
log = logging.getLogger("pipeline")


class ParamsError(InputError):
    """Stage parameters that do not fit the stage's dataclass."""


class OutOfSpace(store.StoreError):
    """The disk (or quota) under the staging folder filled up while the stage wrote."""


_SIMPLE = {bool: bool, int: int, float: (int, float), str: str}

BOUNDS = {
    "minimum": (operator.ge, ">="),
    "exclusiveMinimum": (operator.gt, ">"),
    "maximum": (operator.le, "<="),
    "exclusiveMaximum": (operator.lt, "<"),
}
"""The range keywords a field may declare (JSON Schema's names, so the generated schema says the
same), each with its test and how an error states it."""


def bounded(default: Any, **bounds: float) -> Any:
    """A numeric field with a range, e.g. ``lr: float = bounded(1e-3, exclusiveMinimum=0)``: the
    config schema and :func:`build_params` both read it (a null value is always in range)."""
    unknown = sorted(set(bounds) - set(BOUNDS))
    if unknown:
        raise TypeError(f"unknown bound(s) {unknown}; known: {list(BOUNDS)}")
    return dataclasses.field(default=default, metadata=bounds)


def _check_bounds(value: Any, bounds: Mapping[str, Any], where: str) -> None:
    if value is None:
        return
    for name, limit in bounds.items():
        if name in BOUNDS and not BOUNDS[name][0](value, limit):
            raise ParamsError(
                f"{where}: {value!r} is out of range: must be {BOUNDS[name][1]} {limit}"
            )


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check ``value`` against a field's annotation; ints are accepted (as floats) for floats."""
    origin = typing.get_origin(annotation)
    if dataclasses.is_dataclass(annotation) and isinstance(value, Mapping):
        return build_params(annotation, value, where)
    if origin is typing.Literal:
        allowed = typing.get_args(annotation)
        if isinstance(value, bool) or value not in allowed:
            raise ParamsError(f"{where}: {value!r} is not one of {', '.join(map(repr, allowed))}")
        return value
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(annotation):
            try:
                return _coerce(value, option, where)
            except ParamsError:
                pass
        raise ParamsError(f"{where}: {value!r} fits none of {annotation}")
    if annotation is type(None):
        if value is not None:
            raise ParamsError(f"{where}: expected null, got {value!r}")
        return None
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ParamsError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        items = [_coerce(v, args[0], f"{where}[{i}]") if args else v for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if annotation in _SIMPLE:
        wrong_bool = isinstance(value, bool) and annotation is not bool
        if wrong_bool or not isinstance(value, _SIMPLE[annotation]):
            raise ParamsError(
                f"{where}: expected {annotation.__name__}, got {type(value).__name__} {value!r}"
            )
        return float(value) if annotation is float else value
    return value


def build_params(cls: type[T], values: Mapping[str, Any] | None, where: str = "params") -> T:
    """Instantiate the dataclass ``cls`` from a mapping, with a clear error on unknown fields."""
    values = dict(values or {})
    hints = typing.get_type_hints(cls)
    names = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ParamsError(
            f"{where}: unknown field(s) {unknown} for {cls.__name__}; known: {sorted(names)}"
        )
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in values.items()}
    for f in dataclasses.fields(cls):
        if f.name in kwargs:
            _check_bounds(kwargs[f.name], f.metadata, f"{where}.{f.name}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:  # missing fields, or a dataclass's own checks
        raise ParamsError(f"{where}: {exc}") from exc


def _parse_inputs(pairs: list[str]) -> dict[str, Path]:
    inputs = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep:
            raise SystemExit(f"--input expects NAME=PATH, got {pair!r}")
        inputs[name] = Path(path)
    return inputs


@dataclasses.dataclass(frozen=True)
class StageArgs:
    """A stage's command line, parsed (its params not yet checked against the stage's dataclass)."""

    out: Path
    """The artifact directory to publish (the view folder, for the view)."""
    key: str | None
    """The store key of the artifact; None for a command that publishes no artifact."""
    params: dict[str, Any]
    """The ``--params`` JSON object, as given."""
    inputs: dict[str, Path]
    """The ``--input NAME=PATH`` pairs, by name."""


def parse_stage_args(
    argv: list[str] | None, prog: str | None = None, *, keyed: bool = True
) -> StageArgs:
    """The command line every stage shares: ``--out DIR --key KEY --params JSON --input NAME=PATH``
    (``--input`` repeated). With ``keyed=False`` (a command that publishes no artifact, such as the
    view) ``--key`` and ``--params`` are not accepted. A missing flag or an ``--input`` without
    ``=`` ends the process with a usage error; ``--params`` that is not a JSON object raises
    :class:`ParamsError`."""
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--out", required=True, type=Path, help="the directory to publish")
    if keyed:
        parser.add_argument("--key", required=True, help="the store key of this artifact")
        parser.add_argument("--params", default="{}", help="stage parameters as a JSON object")
    parser.add_argument("--input", action="append", default=[], metavar="NAME=PATH")
    args = parser.parse_args(argv)
    raw: Any = {}
    if keyed:
        try:
            raw = json.loads(args.params)
        except json.JSONDecodeError as exc:
            raise ParamsError(f"--params is not a JSON object: {exc}") from None
        if not isinstance(raw, dict):
            raise ParamsError(f"--params is not a JSON object: {args.params!r}")
    return StageArgs(args.out, args.key if keyed else None, raw, _parse_inputs(args.input))


def input_keys(inputs: Mapping[str, Path]) -> dict[str, str]:
    """The keys recorded in the manifest: a store artifact's key, or a plain file's sha256."""
    keys = {}
    for name, path in inputs.items():
        manifest = path / store.MANIFEST
        if manifest.exists():
            keys[name] = json.loads(manifest.read_text())["key"]
        elif path.is_file():
            keys[name] = "sha256:" + store.file_sha256(path)
        else:
            keys[name] = str(path)
    return keys


def one_line(exc: BaseException) -> str:
    """An error message on one line (a multi-line message would read as several errors)."""
    return " ".join(str(exc).split())


def _running_module(stage: str) -> str:
    """The module run as ``python -m`` (``pipeline.<concept>.<stage>``), else the stage's name."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return spec.name if spec is not None and spec.name.startswith("pipeline.") else stage


def main(
    stage: str,
    params_cls: type[T],
    run: Callable[[T, dict[str, Path], Path, dict[str, Any]], None],
    argv: list[str] | None = None,
    *,
    resumable: tuple[str, ...] = (),
    scratch: tuple[str, ...] = (),
    needs: tuple[str, ...] = (),
) -> None:
    """Run a stage from its command line; bad input ends it with one line naming the culprit, and
    so does a full disk (naming the staging folder, which keeps what a rerun resumes from).

    ``needs`` names the inputs the stage cannot run without. ``resumable`` names the entries of
    a killed run's staging folder that a rerun resumes from (the rest is removed); ``scratch``
    those that only serve a resume (checkpoints), removed at publication, not before, so that a
    run killed between its work and publication resumes.
    """
    try:
        _main(stage, params_cls, run, argv, resumable=resumable, scratch=scratch, needs=needs)
    except (InputError, store.StoreError) as exc:
        raise SystemExit(f"{stage}: error: {one_line(exc)}") from None


def _main(
    stage: str,
    params_cls: type[T],
    run: Callable[[T, dict[str, Path], Path, dict[str, Any]], None],
    argv: list[str] | None = None,
    *,
    resumable: tuple[str, ...] = (),
    scratch: tuple[str, ...] = (),
    needs: tuple[str, ...] = (),
) -> None:
    args = parse_stage_args(argv, prog=f"python -m {_running_module(stage)}")
    die_with_parent()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr
    )
    raw, inputs = args.params, args.inputs
    params = build_params(params_cls, raw, where=f"{stage} params")
    missing = [name for name in needs if name not in inputs]
    if missing:
        raise InputError(f"needs --input {missing[0]}=PATH")
    for name, path in inputs.items():
        if not path.exists():
            raise InputError(f"input {name} does not exist: {path}")
        if path.is_dir() and path.parent.parent.name == "store":
            store.read_manifest(path, verify="fast")
    try:
        with staging.publishing(
            args.out, args.key, stage, raw, input_keys(inputs), resumable, scratch
        ) as (workdir, info):
            fault_point(f"stage.{stage}.start")
            run(params, inputs, workdir, info)
            fault_point(f"stage.{stage}.publish")
    except staging.AlreadyPublished:
        # Another run (another experiment or working directory on this store) built it while
        # this one waited on the staging lock, or before Snakemake started this job.
        store.read_manifest(args.out, verify="fast")
        log.info(
            "%s is already published (by another run, or before this job); reusing it", args.out
        )
        return
    except (InputError, store.StoreError):
        raise
    except Exception as exc:
        folder = store.staging_dir(args.out)
        if not disk.out_of_space(exc, folder):
            raise
        raise OutOfSpace(
            f"no space left on device in {disk.describe(folder)} ({one_line(exc)}); nothing "
            "was published; free space and rerun: the stage resumes from what that folder keeps"
        ) from exc
    log.info("published %s", args.out)
    fault_point(f"stage.{stage}.published")
