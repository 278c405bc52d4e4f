"""Example reads from an evaluate artifact: a seeded sample, every condition, the metric's own
scorer, and for a decoder reading several blocks, the answers at the metric's own."""

from __future__ import annotations

import json

from pipeline.report import examples

SUBJECTS = ["Paris", "Oslo", "Lima", "Tokyo", "Rome"]


def evaluate_artifact(root, layers=(15, 23)):
    """eval.json, predictions.jsonl and read_dialogs.jsonl as the evaluate stage writes them
    for a decoder reading ``layers`` (subject identification chosen at the first)."""
    summary = {"conditions": {"true": {"mean": 0.4}}, "grounding_gap": {"mean": 0.4}}
    result = {"kind": "entity", "n": 5, **summary, "layer": layers[0]}
    result["by_layer"] = {str(layer): summary for layer in layers}
    (root / "eval.json").write_text(json.dumps({"metrics": {"subject_identification": result}}))
    rows, dialogs = [], []
    for i, subject in enumerate(SUBJECTS):
        item = f"fact{i}:subject"
        base = {"metric": "subject_identification", "item": item, "subject": subject,
                "question": "Which city is mentioned?", "reference": subject}  # fmt: skip
        for layer in layers:
            for condition in ("true", "shuffled", "untrained"):
                hit = float(condition == "true" and layer == layers[0])
                rows.append({**base, "condition": condition, "layer": layer, "entity": hit,
                             "prediction": f"{condition} at {layer}",
                             "donor": f"fact{(i + 1) % 5}:subject"})  # fmt: skip
        rows.append({**base, "condition": "text_only", "layer": None, "entity": 1.0,
                     "prediction": subject, "donor": item})  # fmt: skip
        message = {"role": "user", "content": f"We flew to {subject}."}
        dialogs.append({"metric": "subject_identification", "item": item, "n_masked_turns": 0,
                        "messages": [message]})  # fmt: skip
    (root / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "read_dialogs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in dialogs))
    return root


def test_answers_at_the_metric_s_own_layer_with_every_condition(tmp_path):
    chosen = examples.choose(evaluate_artifact(tmp_path), per_metric=3, seed=0)
    assert len(chosen) == 3 and len({e["item"] for e in chosen}) == 3
    for example in chosen:
        assert example["layer"] == 15 and example["scorer"] == "entity"
        answers = example["answers"]
        assert list(answers) == ["true", "shuffled", "untrained", "text_only"]
        assert answers["true"] == {"answer": "true at 15", "hit": True, "scores": {"entity": 1.0}}
        assert answers["untrained"]["hit"] is False
        assert answers["text_only"]["answer"] == example["reference"]
        donor = SUBJECTS[(SUBJECTS.index(example["reference"]) + 1) % 5]
        assert answers["shuffled"]["read_from"] == donor
        assert example["messages"][0]["content"] == f"We flew to {example['reference']}."
    again = examples.choose(tmp_path, per_metric=3, seed=0)
    assert again == chosen  # seeded
    assert {e["item"] for e in examples.choose(tmp_path, 3, seed=1)} != {e["item"] for e in chosen}
    other = examples.choose(tmp_path, per_metric=3, seed=0, layer=23)
    assert [e["answers"]["true"]["answer"] for e in other] == ["true at 23"] * 3


def test_markdown_and_html_mark_hits_and_escape_text(tmp_path):
    chosen = examples.choose(evaluate_artifact(tmp_path), per_metric=1, seed=0)
    chosen[0]["messages"][0]["content"] = "<script>alert(1)</script> | piped"
    lines = "\n".join(examples.markdown_lines(chosen))
    assert (
        "| true | true at 15 | ✓ hit |" in lines
        and "| untrained | untrained at 15 | ✗ miss |" in lines
    )
    assert "read at block 15" in lines
    block = examples.html_block(chosen)
    assert "<script>" not in block and "&lt;script&gt;" in block
    assert "<td class='hit'>✓ hit</td>" in block and "<td class='miss'>✗ miss</td>" in block


def test_a_decoder_reading_every_block_at_once(tmp_path):
    """Its answers under ``all``; each block alone (the others given the donor's activations)
    shares the one shuffled answer, written once under ``all``."""
    summary = {"conditions": {"true": {"mean": 0.4}}, "grounding_gap": {"mean": 0.4}}
    result = {"kind": "entity", "n": 5, **summary, "layer": "all"}
    result["by_layer"] = {key: summary for key in ("all", "15", "23")}
    (tmp_path / "eval.json").write_text(json.dumps({"metrics": {"subject_identification": result}}))
    rows = []
    for i, subject in enumerate(SUBJECTS):
        base = {"metric": "subject_identification", "item": f"fact{i}:subject",
                "question": "Which city is mentioned?", "reference": subject, "entity": 0.0,
                "donor": f"fact{(i + 1) % 5}:subject"}  # fmt: skip
        written = {"all": ("true", "shuffled", "untrained"), 15: ("true", "untrained")}
        for layer, conditions in {**written, 23: ("true", "untrained")}.items():
            for condition in conditions:
                rows.append({**base, "condition": condition, "layer": layer,
                             "prediction": f"{condition} at {layer}"})  # fmt: skip
        rows.append({**base, "condition": "text_only", "layer": None, "prediction": subject})
    (tmp_path / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "read_dialogs.jsonl").write_text("")
    together = examples.choose(tmp_path, per_metric=2, seed=0)
    assert [e["layer"] for e in together] == ["all", "all"]
    answers = together[0]["answers"]
    assert [answers[c]["answer"] for c in ("true", "shuffled", "untrained")] == [
        "true at all",
        "shuffled at all",
        "untrained at all",
    ]
    assert "read at every read block at once" in "\n".join(examples.markdown_lines(together))
    alone = examples.choose(tmp_path, per_metric=2, seed=0, layer=15)
    answers = alone[0]["answers"]
    assert list(answers) == ["true", "shuffled", "untrained", "text_only"]
    assert answers["true"]["answer"] == "true at 15"
    assert answers["shuffled"]["answer"] == "shuffled at all"
