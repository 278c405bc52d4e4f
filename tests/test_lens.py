"""The logit lens: its last block is the model's own output, a token planted at one block is found
there and not before, translation prompts leave out words the lens could not tell apart."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import REPO

from pipeline.analysis.lens import (
    final_norm,
    lens_ranks,
    load_translation,
    run,
    summarize_lens,
    translation_prompts,
)
from pipeline.analysis.params import LensParams
from pipeline.mechanism.modeling import decoder_layers

PROMPT = {"task": "t", "prompt": "The capital of France is", "answer": [" Paris"], "english": None}


def test_lens_at_the_last_block_is_the_models_output(tiny_model, tokenizer):
    record = lens_ranks(tiny_model, tokenizer, [PROMPT], batch_size=1)[0]
    ids = torch.tensor([tokenizer(PROMPT["prompt"])["input_ids"]])
    with torch.no_grad():
        probs = tiny_model(input_ids=ids).logits[0, -1].softmax(-1)
    paris = tokenizer(" Paris", add_special_tokens=False)["input_ids"][0]
    assert len(record["answer_rank"]) == 4
    assert record["answer_prob"][-1] == pytest.approx(float(probs[paris]), rel=1e-4)
    assert record["answer_rank"][-1] == int((probs > probs[paris]).sum()) + 1


def test_a_token_planted_at_one_block_is_found_from_that_block_on(tiny_model, tokenizer):
    target = tokenizer(" Paris", add_special_tokens=False)["input_ids"][0]
    direction = tiny_model.get_output_embeddings().weight[target].detach()
    block = decoder_layers(tiny_model)[2]

    def plant(_module, _args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        hidden = hidden.clone()
        hidden[:, -1] += 200 * direction / direction.norm()
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    handle = block.register_forward_hook(plant)
    try:
        record = lens_ranks(tiny_model, tokenizer, [PROMPT, PROMPT], batch_size=2)[0]
    finally:
        handle.remove()
    assert record["answer_rank"][2] == 1
    assert record["answer_prob"][2] > 2 * max(record["answer_prob"][:2])
    assert record["answer_rank"][0] > 10 and record["answer_rank"][1] > 10


def test_final_norm_is_found_for_each_family(tiny_model):
    assert final_norm(tiny_model) is tiny_model.model.norm


def test_translation_prompts_leave_out_words_that_start_like_english(tokenizer):
    languages, words = load_translation(REPO / "data" / "lens" / "translation.yaml")
    prompts = translation_prompts(languages, words, LensParams(shots=2), tokenizer)
    tasks = {p["task"] for p in prompts}
    assert tasks == {"translation:fr-de", "translation:de-fr"}
    assert "village" not in {p["word"] for p in prompts if p["task"] == "translation:fr-de"}
    fleur = next(p for p in prompts if p["task"] == "translation:fr-de" and p["word"] == "flower")
    assert fleur["prompt"].endswith('Français: "fleur" - Deutsch: "')
    assert fleur["prompt"].count("\n") == 2 and fleur["answer"][0] == "Blume"


def test_bad_word_lists_are_refused(tmp_path):
    path = tmp_path / "words.yaml"
    path.write_text(
        "languages: {en: English, fr: Français}\nwords:\n- {en: dog}\n- {en: a, fr: b}\n"
    )
    with pytest.raises(ValueError, match=r"words\[0\]"):
        load_translation(path)


def test_stage_writes_curves_for_every_task(tmp_path, tiny_model_dir):
    info: dict = {}
    inputs = {
        "model": tiny_model_dir,
        "relations": REPO / "data" / "relations.yaml",
        "translation": REPO / "data" / "lens" / "translation.yaml",
    }
    run(LensParams(max_facts_per_relation=2, device="cpu"), inputs, tmp_path, info)
    report = json.loads((tmp_path / "lens.json").read_text())
    assert set(report["tasks"]) == {"relations", "translation:fr-de", "translation:de-fr"}
    assert report["tasks"]["relations"]["n"] == 22 and "english" not in report["tasks"]["relations"]
    curve = report["tasks"]["translation:fr-de"]["english"]
    assert len(curve["rank_median"]) == report["n_blocks"] == 4
    assert all(a <= b <= c for a, b, c in zip(curve["rank_q25"], curve["rank_median"],
                                              curve["rank_q75"], strict=True))  # fmt: skip
    assert (tmp_path / "lens.png").exists() and (tmp_path / "lens_items.jsonl").exists()


def test_summary_counts_top1_and_the_first_block_in_the_top_ten():
    records = [{"task": "t", "answer_rank": [50, 5, 1], "answer_prob": [0.0, 0.1, 0.9]}] * 3
    summary = summarize_lens(records, 3)["tasks"]["t"]["answer"]
    assert summary["top1"] == [0.0, 0.0, 1.0]
    assert summary["first_block_median_rank_le_10"] == 1
