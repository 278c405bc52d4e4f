"""The evaluation's tables and plots, drawn from a report dict alone."""

from __future__ import annotations

from pipeline.evaluation.tables import write_plots, write_tables


def _summary(mean, low, high, n=4):
    return {"mean": mean, "ci95": [low, high], "std": 0.5, "n": n}


def _report():
    conditions = {"true": "own activations", "shuffled": "another item's activations"}
    loglik = {
        "kind": "loglik",
        "description": "answer log-likelihood",
        "n": 4,
        "conditions": {
            "true": {**_summary(-1.5, -1.9, -1.1), "perplexity": 4.48},
            "shuffled": {**_summary(-2.25, -2.6, -1.9), "perplexity": 9.49},
        },
        "grounding_gap": _summary(0.75, 0.4, 1.1),
        "text_only_gap": _summary(0.1, None, None),
    }
    skipped = {"kind": "match", "description": "exact recovery", "skipped": "no items"}
    return {
        "decoder": {"read_layer": 23, "write_layer": 23, "positions": "all"},
        "conditions": conditions,
        "metrics": {"answer_loglik": loglik, "recovery": skipped},
    }


def test_tables_follow_the_reports_conditions_and_mark_skipped_metrics(tmp_path):
    path = tmp_path / "tables.md"
    write_tables(_report(), path)
    text = path.read_text(encoding="utf-8")
    assert "read layers 23, write layer 23" in text
    assert "**true**: own activations; **shuffled**: another item's activations." in text
    assert "| metric | n | layer | true | shuffled | grounding gap | gap 95% CI |" in text
    assert "| answer_loglik | 4 | – | -1.500 | -2.250 | 0.750 | [0.400, 1.100] |" in text
    assert "| recovery | 0 | – | – | – | – | – |" in text and "Skipped: no items." in text
    assert "By read layer" not in text  # one layer: nothing to compare
    # perplexity column only where a condition has one; an undefined CI prints as a dash
    assert "| true | -1.500 | [-1.900, -1.100] | 0.500 | 4 | 4.48 |" in text
    assert "| text-only gap (true − text_only) | 0.100 | – | 0.500 | 4 | – |" in text


def test_plots_one_per_shown_metric_and_an_overview(tmp_path):
    write_plots(_report(), tmp_path)
    assert sorted(p.name for p in tmp_path.glob("*.png")) == [
        "plot_answer_loglik.png",
        "plot_overview.png",
    ]
    empty = {**_report(), "metrics": {"recovery": _report()["metrics"]["recovery"]}}
    none = tmp_path / "none"
    none.mkdir()
    write_plots(empty, none)
    assert not list(none.glob("*.png"))
