"""The view's date tells Snakemake (mtime trigger only) whether to rebuild it."""

from __future__ import annotations

import json
import time

import pytest
from conftest import view_mtime

from pipeline.core import store
from pipeline.core.graph import Node
from pipeline.core.view import OUTDATED, _write_view, main, refresh_view


def graph_and_store(tmp_path):
    node = Node("train", {}, key="0123456789abcdef")
    artifact = tmp_path / "store" / "train" / node.key
    artifact.mkdir(parents=True)
    store.write_manifest(artifact, node.key, "train", {}, {})
    return {"train": node}, tmp_path / "store", artifact


def test_a_current_view_whose_artifact_was_removed_is_rebuilt(tmp_path):
    graph, store_dir, artifact = graph_and_store(tmp_path)
    view = tmp_path / "results" / "tiny"
    _write_view(view, {"train": str(artifact)})
    assert not refresh_view(view, graph, store_dir) and view_mtime(view) > time.time() - 60

    # Removed from the store (by hand, or by Snakemake after a failed job): the view names the
    # same keys but links to nothing; dated to the epoch, it is rebuilt after the artifact.
    (artifact / store.MANIFEST).unlink()
    assert not refresh_view(view, graph, store_dir)
    assert view_mtime(view) <= OUTDATED

    # Published again: current, and dated today again.
    store.write_manifest(artifact, "0123456789abcdef", "train", {}, {})
    assert not refresh_view(view, graph, store_dir)
    assert view_mtime(view) > time.time() - 60


def test_the_view_command_links_the_artifacts_and_the_run_finds_it_current(tmp_path):
    graph, store_dir, artifact = graph_and_store(tmp_path)
    (artifact / "adapter").mkdir()
    view = tmp_path / "results" / "tiny"
    main(["--out", str(view), "--input", f"train={artifact}"])
    assert json.loads((view / "view.json").read_text()) == {"train": str(artifact)}
    assert (view / "train").resolve() == artifact.resolve()
    assert (view / "adapter").resolve() == (artifact / "adapter").resolve()
    assert not refresh_view(view, graph, store_dir)  # as the run would have written it

    # An artifact that is not published is refused, and the old view stays.
    (artifact / store.MANIFEST).unlink()
    with pytest.raises(store.StoreError):
        main(["--out", str(view), "--input", f"train={artifact}"])
    assert json.loads((view / "view.json").read_text()) == {"train": str(artifact)}
