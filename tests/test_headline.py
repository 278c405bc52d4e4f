"""The report's headline: one sentence per reading metric, its gap and interval, a verdict."""

from __future__ import annotations

from pipeline.report.headline import format_gap, headline_lines, verdict


def result(kind: str, gap: tuple[float, float, float], n: int = 60, **means) -> dict:
    mean, low, high = gap
    conditions = {c: {"mean": means.get(c, 0.0)} for c in ("true", "shuffled", "untrained")}
    conditions["text_only"] = {"mean": means.get("text_only", 0.0)}
    return {
        "kind": kind,
        "n": n,
        "conditions": conditions,
        "grounding_gap": {"mean": mean, "ci95": [low, high], "n": n},
    }


def test_gaps_are_written_in_the_metric_s_own_unit():
    assert format_gap({"mean": 0.407, "ci95": [0.329, 0.482]}, "loglik") == (
        "+0.407 nats/token [0.329, 0.482]"
    )
    assert format_gap({"mean": 0.2333, "ci95": [0.1333, 0.35]}, "entity") == (
        "+23.3 points [13.3, 35]"
    )
    assert format_gap({"mean": -0.05, "ci95": [-0.1, 0.0]}, "concept") == "-5 points [-10, 0]"
    assert format_gap({"mean": 0.13, "ci95": [0.06, 0.21]}, "similarity") == "+0.13 [0.06, 0.21]"
    assert format_gap({"mean": None, "ci95": [None, None]}, "match") == "–"


def test_the_verdict_follows_the_interval_not_the_mean():
    assert verdict({"mean": 0.04, "ci95": [0.0, 0.125]}) == "not shown to read"
    assert verdict({"mean": 0.04, "ci95": [0.01, 0.125]}) == "reads"
    assert verdict({"mean": -0.2, "ci95": [-0.3, -0.1]}).startswith("reads less")


def test_headline_answers_first_then_one_sentence_per_reading_metric():
    report = {
        "decoder": {"read_layer": 23},
        "metrics": {
            # A seen-label metric measures fitting: not in the headline.
            "recovery_seen": result("match", (0.21, 0.08, 0.38)),
            "subject_identification": result(
                "entity", (0.233, 0.133, 0.35), true=0.233, text_only=0.5
            ),
            "answer_loglik": result(
                "loglik", (0.407, 0.329, 0.482), 192, true=-2.137, shuffled=-2.543
            ),
            "recovery_heldout": result("match", (0.04, 0.0, 0.125), 24, true=0.04),
            "feature_extraction": {"n": 1, "skipped": "fewer than 2 items"},
        },
    }
    lines = headline_lines(report)
    assert lines[0].startswith("**Does it read? Partly**: on 2 of 3 reading metrics")
    items = [line for line in lines if line.startswith("- ")]
    # In the headline's order, whatever the evaluation's order.
    assert [i.split("**")[1] for i in items] == ["Reads", "Not shown to read", "Reads"]
    assert "+0.407 nats/token [0.329, 0.482] over shuffled" in items[0]
    assert "true -2.137, shuffled -2.543" in items[0] and "n = 192" in items[0]
    assert "the entity of a read sentence" in items[2]
    assert "true 23.3%" in items[2] and "text-only 50%" in items[2]
    assert len(items) == 3  # recovery_seen and the skipped metric are left out
    assert headline_lines({"metrics": {}}) == ["The evaluation has no reading metric with items."]


def test_a_decoder_reading_several_blocks_is_reported_at_each_metric_s_own():
    at_15 = result("entity", (0.8, 0.7, 0.9), true=0.8)
    at_23 = result("entity", (0.2, -0.05, 0.4), true=0.2)
    report = {
        "decoder": {"read_layers": [15, 23]},
        "metrics": {
            "subject_identification": {
                **at_15,
                "layer": 15,
                "by_layer": {"15": dict(at_15), "23": dict(at_23)},
            }
        },
    }
    chosen = headline_lines(report)[-1]
    assert chosen.startswith("- **Reads** the entity of a read sentence (unseen relations) at "
                             "block 15: +80 points [70, 90]")  # fmt: skip
    other = headline_lines(report, layer=23)[-1]
    assert "at block 23: +20 points [-5, 40]" in other and "**Not shown to read**" in other


def test_choice_metrics_are_shares_with_their_chance():
    truth = {**result("choice", (0.1, 0.02, 0.2), 40, true=0.7, shuffled=0.6), "chance": 0.5}
    line = headline_lines({"metrics": {"truth": truth}})[-1]
    assert "whether a read statement is true" in line
    assert "+10 points [2, 20]" in line and "true 70%" in line and "chance 50%" in line


def test_a_decoder_reading_every_block_at_once_is_reported_reading_them_all():
    together = result("entity", (0.6, 0.5, 0.7), true=0.6)
    alone = result("entity", (0.1, -0.1, 0.3), true=0.1)
    report = {
        "decoder": {"read_layers": [15, 23], "all_layers": True},
        "metrics": {
            "subject_identification": {
                **together,
                "layer": "all",
                "by_layer": {"all": dict(together), "15": dict(alone), "23": dict(together)},
            }
        },
    }
    line = headline_lines(report)[-1]
    assert "(unseen relations) at every read block at once: +60 points" in line
    assert "at block 15: +10 points" in headline_lines(report, layer=15)[-1]


def test_a_gap_the_base_model_matches_unaided_is_said_so():
    beaten = result("loglik", (0.164, 0.124, 0.205), 128, true=-3.88, untrained=-3.19)
    ahead = result("loglik", (0.164, 0.124, 0.205), 128, true=-3.88, untrained=-4.2)
    lines = {
        name: headline_lines({"decoder": {}, "metrics": {"latentqa_loglik": r}})[-1]
        for name, r in (("beaten", beaten), ("ahead", ahead))
    }
    caveat = "over shuffled, but no better than the base model with its adapter off"
    assert caveat in lines["beaten"]
    assert "adapter off" not in lines["ahead"] and lines["ahead"].startswith("- **Reads**")
