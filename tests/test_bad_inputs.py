"""The bad-input corpus (tests/bad_inputs/): every malformed input is refused by the stage or
command that reads it, with a non-zero exit, one error line naming the input and what is wrong,
no traceback, and nothing published.

Stages and ``pipeline.read`` run in this process (the error path is the same as on the command
line: ``SystemExit`` with the message); the workflow cases run ``snakemake -n`` in a copy of the
repository.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO
from test_read import prepared  # noqa: F401  (a fixture: a tiny model and a decoder on it)

from pipeline import read
from pipeline.core import stage, store

CORPUS = REPO / "tests" / "bad_inputs"
CASES = yaml.safe_load((CORPUS / "cases.yaml").read_text())
KEY = "0123456789abcdef"


def _exit_message(main, argv, capsys) -> str:
    """Run a command line in this process; it must exit non-zero, and this is what it said."""
    with pytest.raises(SystemExit) as exited:
        main(argv)
    code = exited.value.code
    assert code not in (0, None), f"exited with {code!r}"
    return code if isinstance(code, str) else capsys.readouterr().err.strip()


def _stage(name: str, module_run, params_cls, params: dict, inputs: dict, tmp_path, capsys):
    store_dir = tmp_path / "store"
    argv = ["--out", str(store_dir / name / KEY), "--key", KEY, "--params", json.dumps(params)]
    for input_name, path in inputs.items():
        argv += ["--input", f"{input_name}={path}"]
    message = _exit_message(lambda a: stage.main(name, params_cls, module_run, a), argv, capsys)
    return message, store_dir


def read_case(case, source: Path, tmp_path, capsys, prepared):  # noqa: F811
    model, train = prepared
    out = tmp_path / "answers.jsonl"
    argv = ["--adapter", str(train), "--model", str(model), "--out", str(out)]
    if case["consumer"] == "read_dialogs":
        argv += ["--dialogs", str(source), "--question", "Who is it?"]
    elif case["consumer"] == "read_questions":
        argv += ["--prompt", "I love sailing.", "--questions", str(source)]
    else:
        argv += ["--prompt", "I love sailing.", "--question", "Who is it?"]
        argv += shlex.split(source.read_text())
    message = _exit_message(read.main, argv, capsys)
    assert not out.exists()
    return message, None


def import_case(case, source, tmp_path, capsys, prepared):  # noqa: F811
    from pipeline.data.import_latentqa import ImportParams
    from pipeline.data.import_latentqa import run as import_run

    params = {"kinds": case["kinds"]}
    return _stage(
        "import_latentqa", import_run, ImportParams, params, {"source": source}, tmp_path, capsys
    )


def filter_case(case, source, tmp_path, capsys, prepared):  # noqa: F811
    from pipeline.data.filter import FilterParams
    from pipeline.data.filter import run as filter_run

    model, _ = prepared
    folder = tmp_path / source.stem
    folder.mkdir()
    shutil.copy(source, folder / "dialogs.parquet")
    inputs = {"data_bad": folder, "model": model}
    return _stage("filter", filter_run, FilterParams, {}, inputs, tmp_path, capsys)


def prepare_case(case, source, tmp_path, capsys, prepared):  # noqa: F811
    from pipeline.core.model_source import ModelSpec
    from pipeline.mechanism.prepare_model import run as prepare_run

    model, _ = prepared
    folder = tmp_path / source.name  # the tiny model with the case's files over it
    shutil.copytree(model, folder, ignore=shutil.ignore_patterns(store.MANIFEST))
    for bad in source.iterdir():
        shutil.copy(bad, folder / bad.name)
    params = {"source": "local", "name": str(folder)}
    return _stage("prepare_model", prepare_run, ModelSpec, params, {}, tmp_path, capsys)


def params_case(case, source, tmp_path, capsys, prepared):  # noqa: F811
    from pipeline.core.model_source import ModelSpec
    from pipeline.mechanism.prepare_model import run as prepare_run

    store_dir = tmp_path / "store"
    argv = ["--out", str(store_dir / "prepare_model" / KEY), "--key", KEY]
    argv += ["--params", source.read_text()]
    main = lambda a: stage.main("prepare_model", ModelSpec, prepare_run, a)  # noqa: E731
    return _exit_message(main, argv, capsys), store_dir


def curate_case(case, source, tmp_path, capsys, prepared):  # noqa: F811
    """Every cached response is prose, not the JSON asked for; the endpoint is never called."""
    from pipeline.curation.curate import run as curate_run
    from pipeline.curation.params import CurateParams
    from pipeline.curation.prompts import build_requests
    from pipeline.curation.request_cache import RequestCache

    values = {
        "base_url": "http://127.0.0.1:9/v1",
        "api_key_env": "",
        "families": ["persona"],
        "samples_per_family": 1,
        "cache_dir": str(tmp_path / "cache"),
        "templates_dir": str(REPO / "data" / "curation"),
    }
    cache = RequestCache(values["cache_dir"])
    response = json.loads(source.read_text())["response"]
    for request in build_requests(stage.build_params(CurateParams, values)):
        cache.put(request["key"], {"messages": request["messages"]}, response)
    return _stage("curate", curate_run, CurateParams, values, {}, tmp_path, capsys)


def workflow_case(case, source, tmp_path, capsys, prepared):  # noqa: F811
    model, _ = prepared
    root = tmp_path / "repo"
    for name in ("workflow", "pipeline", "data", "config"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    config = source.read_text().replace("{tiny_model}", str(model)).replace("{corpus}", str(CORPUS))
    (root / "config" / "config.yaml").write_text(config)
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--cores", "1", "results/tiny"],
        cwd=root,
        env={**__import__("os").environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    hits = [line for line in output.splitlines() if case["expect"] in line]
    assert hits, output[-3000:]
    return hits[0], root / "results" / "store"


CONSUMERS = {
    "read_dialogs": read_case,
    "read_questions": read_case,
    "read_args": read_case,
    "import_latentqa": import_case,
    "filter": filter_case,
    "prepare_model": prepare_case,
    "stage_params": params_case,
    "curate": curate_case,
    "workflow": workflow_case,
}


def test_the_corpus_is_large_and_every_case_exists():
    assert len(CASES) >= 30
    assert len({case["path"] for case in CASES}) == len(CASES)
    for case in CASES:
        assert (CORPUS / case["path"]).exists(), case["path"]
        assert case["consumer"] in CONSUMERS, case


@pytest.mark.parametrize("case", CASES, ids=[c["path"] for c in CASES])
def test_bad_input_is_refused_with_one_clear_line(case, tmp_path, capsys, prepared):  # noqa: F811
    source = CORPUS / case["path"]
    message, store_dir = CONSUMERS[case["consumer"]](case, source, tmp_path, capsys, prepared)
    assert "\n" not in message.strip(), f"more than one line:\n{message}"
    assert "Traceback" not in message
    names = case.get("names", source.stem)
    assert names in message, f"the error does not name {names!r}: {message}"
    assert case["expect"] in message, message
    if store_dir is not None and store_dir.exists():
        assert list(store_dir.rglob(store.MANIFEST)) == [], "something was published"
