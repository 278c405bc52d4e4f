"""Snakemake keeps an output that another run published after this run's DAG was built.

A two-rule workflow stands for two runs on one store: rule `other` publishes `store/a/k` (another
run's stage, finishing) after the DAG was built and before this run's job for `store/a/k`
starts. Snakemake deletes a job's existing outputs before running it; with the guard of
`pipeline.core.immutable` it keeps a published one, and the job finds it.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO

SNAKEFILE = """
import sys
sys.path.insert(0, {repo!r})
{guard}

rule all:
    input: "store/a/k"

rule other:
    output: touch("other.done")
    shell: "mkdir -p store/a/k && echo published by the other run > store/a/k/_manifest.json"

rule a:
    input: "other.done"
    output: directory("store/a/k")
    shell:
        "if [ -f {{output}}/_manifest.json ]; then echo reused > reused; "
        "else mkdir -p {{output}} && echo built here > {{output}}/_manifest.json; fi"
"""
GUARD = "from pipeline.core.immutable import keep_published_outputs\nkeep_published_outputs()"


@pytest.mark.parametrize("guarded", [True, False])
def test_an_output_published_after_the_dag_was_built_is_kept(tmp_path, guarded):
    snakefile = tmp_path / "Snakefile"
    snakefile.write_text(SNAKEFILE.format(repo=str(REPO), guard=GUARD if guarded else ""))
    done = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "1", "-s", str(snakefile)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = (tmp_path / "store" / "a" / "k" / "_manifest.json").read_text()
    if guarded:
        assert manifest == "published by the other run\n" and (tmp_path / "reused").exists()
        assert "Keeping store/a/k: published" in done.stderr
    else:  # what the guard prevents: the other run's artifact deleted under its readers
        assert manifest == "built here\n" and not (tmp_path / "reused").exists()
