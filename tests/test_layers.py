"""The layer-choice command: smoothing, the suggestion, and what it says when artifacts are missing
(the run on built artifacts is in tests/test_workflow.py)."""

from __future__ import annotations

import pytest
import yaml

from pipeline.analysis.layers import analysis_graph, smooth, suggest


def test_smoothing_averages_neighbours_and_keeps_gaps():
    assert smooth([0.0, 0.3, 0.6]) == pytest.approx([0.15, 0.3, 0.45])
    assert smooth([None, 1.0, 0.0]) == [None, 0.5, 0.5]


def test_suggestion_prefers_a_broad_peak_over_a_lone_spike():
    layers = [0, 1, 2, 3, 4, 5, 6]
    accuracy = [0.1, 0.9, 0.1, 0.5, 0.6, 0.6, 0.2]
    assert suggest(accuracy, layers) == 4
    assert suggest([None, None], [0, 1]) is None
    assert suggest([0.5, 0.5, 0.5], [0, 1, 2]) == 0


def test_an_experiment_without_analysis_is_named(tmp_path, tiny_model_dir):
    config = {
        "experiments": {
            "plain": {
                "model": {"source": "local", "name": str(tiny_model_dir)},
                "data": {"templates": {}},
                "train": {"read_layers": [1]},
            }
        }
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(SystemExit, match="add `analysis: {}`"):
        analysis_graph("plain", path, tmp_path)
    with pytest.raises(SystemExit, match="no experiment 'other'"):
        analysis_graph("other", path, tmp_path)
