"""The readers' Markdown: best block per reader, the decoder's block beside it, lens milestones."""

from __future__ import annotations

from pipeline.analysis.summary import best, lens_lines, probes_table


def s(mean: float) -> dict:
    return {"mean": mean, "ci95": [mean - 0.1, mean + 0.1], "n": 10}


REPORT = {
    "tasks": {
        "truth": {
            "description": "pick the true member",
            "chance": 0.5,
            "per_layer": {
                "logistic": {str(k): {"eval": s(v), "validation": s(v)}
                             for k, v in enumerate([0.5, 0.8, 0.9, 0.9])},
                "random": {str(k): {"eval": s(0.5), "validation": s(0.5)} for k in range(4)},
            },
            "zero_shot": {"eval": s(0.6)},
            "decoder": {"eval": s(0.7), "layer": 2},
        },
        "labels": {"skipped": "no recovery question shared by enough labels"},
    }
}  # fmt: skip


def test_best_block_is_the_earliest_of_the_top():
    assert best(REPORT["tasks"]["truth"]["per_layer"]["logistic"], "eval")[0] == 2
    assert best({}, "eval") is None


def test_probes_table_rows():
    text = "\n".join(probes_table(REPORT, read_layers=[1]))
    assert "| logistic | 2 | 90% [80, 100] | 80% [70, 90] |" in text
    assert "| random | 0 | 50% [40, 60] | 50% [40, 60] |" in text
    assert "| decoder | block 2 (chosen on validation) | 70% [60, 80] | – |" in text
    assert "| zero_shot | output | 60% [50, 70] | – |" in text
    assert "**labels**: skipped (no recovery question shared by enough labels)." in text


def test_the_decoder_sits_beside_the_probes_at_each_block_it_reads():
    truth = {
        **REPORT["tasks"]["truth"],
        "decoder": {"eval": s(0.7), "layer": 2},
        "decoder_by_layer": {"1": s(0.55), "2": s(0.7)},
    }
    lines = probes_table({"tasks": {"truth": truth}}, read_layers=[1, 2])
    at = "| accuracy at block 1 | accuracy at block 2 |"
    assert "| reader | best block (eval) | accuracy there " + at in lines
    assert "| logistic | 2 | 90% [80, 100] | 80% [70, 90] | 90% [80, 100] |" in lines
    decoder = (
        "| decoder | block 2 (chosen on validation) | 70% [60, 80] | 55% [45, 65] | 70% [60, 80] |"
    )
    assert decoder in lines
    assert "| zero_shot | output | 60% [50, 70] | – | – |" in lines


def test_lens_lines_name_the_first_block_in_the_top_ten():
    curve = {"first_block_median_rank_le_10": 5, "top1": [0.0, 0.25]}
    report = {
        "tasks": {
            "relations": {"n": 4, "answer": curve},
            "translation:fr-de": {
                "n": 3,
                "answer": {**curve, "top1": [0, 0.5]},
                "english": {**curve, "first_block_median_rank_le_10": None},
            },
        }
    }
    lines = lens_lines(report)
    assert "| relations | 4 | 5 | 25% | – |" in lines
    assert "| translation:fr-de | 3 | 5 | 50% | – |" in lines
