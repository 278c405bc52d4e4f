"""Which items the evaluation scores: seeded, capped, and only reads that fit the token limit."""

from __future__ import annotations

from pipeline.evaluation.items import dialog_key, qa_items


def _row(i: int, reply_words: int = 3) -> dict:
    return {
        "id": f"d{i}",
        "label": f"persona-{i % 3}",
        "kind": "system",
        "split": "eval",
        "n_masked_turns": 1,
        "messages": [
            {"role": "system", "content": f"Be persona {i}."},
            {"role": "user", "content": "Hello there."},
            {"role": "assistant", "content": " ".join(["word"] * reply_words)},
        ],
        "qa": [
            {"question": "Who are you?", "answer": f"Persona {i}."},
            {"question": "What do you do?", "answer": f"Job {i}."},
        ],
    }


def test_items_are_seeded_capped_and_keyed_by_their_dialog(tokenizer):
    rows = [_row(i) for i in range(6)]
    items = qa_items(rows, tokenizer, cap=5, seed=3, limit=10_000)
    assert len(items) == 5 and len({it.id for it in items}) == 5
    assert [it.id for it in items] == [it.id for it in qa_items(rows, tokenizer, 5, 3, 10_000)]
    assert [it.id for it in items] != [it.id for it in qa_items(rows, tokenizer, 5, 4, 10_000)]
    by_id = {row["id"]: row for row in rows}
    for it in items:
        row = by_id[it.meta["dialog_id"]]
        assert it.dialog == dialog_key(row["messages"], 1) and it.group == row["label"]
        assert (it.question, it.reference) in {(qa["question"], qa["answer"]) for qa in row["qa"]}


def test_items_skip_reads_over_the_limit_and_can_take_one_qa_pair(tokenizer):
    rows = [_row(0, reply_words=400), _row(1)]
    items = qa_items(rows, tokenizer, cap=10, seed=0, limit=100)
    assert {it.meta["dialog_id"] for it in items} == {"d1"}
    second = qa_items(rows[1:], tokenizer, cap=10, seed=0, limit=100, qa_index=1)
    assert [(it.id, it.question) for it in second] == [("d1:1", "What do you do?")]
    assert qa_items(rows[1:], tokenizer, cap=10, seed=0, limit=100, qa_index=5) == []
