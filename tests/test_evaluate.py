"""The evaluation stage on a tiny random model with a tiny random adapter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pipeline.core import store
from pipeline.data.schema import write_dialogs
from pipeline.evaluation import evaluate
from pipeline.evaluation.evaluate import (
    CONDITIONS,
    EvalParams,
    condition_inputs,
    text_only_example,
)
from pipeline.evaluation.items import Item, Metric, dialog_key
from pipeline.mechanism.decoder_files import load_decoder
from pipeline.mechanism.decoder_settings import DecoderSettings
from pipeline.mechanism.dialogs import build_decoder_example, placeholder_id
from pipeline.mechanism.reading import compute_reads
from pipeline.training.sampling import derangement

READ_LAYER = 2
PERSONAS = {
    "persona-keeper": "A retired lighthouse keeper.",
    "persona-baker": "A village baker.",
    "persona-pilot": "A bush pilot.",
    "persona-chef": "A sushi chef.",
    "persona-miner": "A coal miner.",
    "persona-monk": "A silent monk.",
}
EVAL_LABELS = {"persona-chef", "persona-miner", "persona-monk"}
STIMULI = ["Tell me about your day.", "What should I cook tonight."]
RELATIONS = """
relations:
- name: country_capital
  question: What is the capital of {subject}?
  sentences:
  - My cousin just got back from {subject}.
  facts:
  - {subject: France, object: Paris}
  - {subject: Japan, object: Tokyo}
  - [Peru, Lima]
- name: element_symbol
  question: What is the chemical symbol of {subject}?
  sentences: ["I read about {subject} today."]
  facts: {gold: Au, iron: Fe}
"""


def make_train_artifact(root: Path, model_dir: Path, read_layer: int = READ_LAYER) -> Path:
    """A train artifact as the train stage publishes it: adapter/ and a manifest with params."""
    from pipeline.mechanism.lora import add_lora
    from pipeline.mechanism.modeling import load_model

    model, _ = load_model(model_dir)
    peft_model = add_lora(model, r=4, alpha=8, dropout=0.0, seed=1)
    with torch.no_grad():  # a fresh LoRA is the identity; make the decoder differ from the base
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    train = root / "train"
    peft_model.save_pretrained(train / "adapter")
    model_key = (
        json.loads((model_dir / store.MANIFEST).read_text())["key"]
        if (model_dir / store.MANIFEST).exists()
        else "0" * 16
    )
    store.write_manifest(
        train,
        "1" * 16,
        "train",
        {
            "read_layer": read_layer,
            "write_layer": 0,
            "positions": "all",
            "align_positions": True,
            "mode": "on_the_fly",
        },
        {"model": model_key},
    )
    return train


def rows() -> list[dict]:
    out = []
    for label, answer in PERSONAS.items():
        for stimulus in STIMULI:
            out.append(
                {
                    "label": label,
                    "kind": "system",
                    "messages": [
                        {"role": "system", "content": f"You are {answer.lower()}"},
                        {"role": "user", "content": stimulus},
                    ],
                    "n_masked_turns": 1,
                    "qa": [
                        {"question": "What persona is the assistant adopting?", "answer": answer},
                        {"question": "Is it a person?", "answer": "Yes."},
                    ],
                    "source": "template",
                    "split": "eval" if label in EVAL_LABELS else "train",
                }
            )
    out.append(
        {
            "label": "persona-sqa",
            "kind": "control",
            "messages": [{"role": "user", "content": "I just adopted a cat named Tom."}],
            "n_masked_turns": 0,
            "qa": [
                {"question": "What is the cat called?", "answer": "Tom."},
                {"question": "What did the user adopt?", "answer": "A cat."},
            ],
            "source": "latentqa-import",
            "split": "eval",
        }
    )
    return out


@pytest.fixture(scope="module")
def stage_inputs(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("eval_inputs")
    (root / "data").mkdir()
    write_dialogs(rows(), root / "data" / "dialogs.parquet")
    relations = root / "relations.yaml"
    relations.write_text(RELATIONS)
    return {
        "model": tiny_model_dir,
        "train": make_train_artifact(root, tiny_model_dir),
        "data": root / "data",
        "relations": relations,
    }


@pytest.fixture(scope="module")
def evaluated(stage_inputs, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("eval_out")
    params = EvalParams(
        batch_size=4,
        max_new_tokens=4,
        relation_tokens=5,
        max_loglik_items=5,
        max_recovery_items=3,
        max_latentqa_items=2,
        max_relation_items=4,
        similarity="token_f1",
        bootstrap=50,
    )
    info: dict = {}
    evaluate.run(params, stage_inputs, workdir, info)
    return workdir, info


def test_eval_json_has_every_metric_under_every_condition(evaluated):
    workdir, info = evaluated
    report = json.loads((workdir / "eval.json").read_text())
    expected = {
        "answer_loglik",
        "recovery_heldout",
        "recovery_seen",
        "latentqa_loglik",
        "latentqa_recovery",
        "feature_extraction",
    }
    assert set(report["metrics"]) == expected
    for name, metric in report["metrics"].items():
        assert set(metric["conditions"]) == set(CONDITIONS), name
        for summary in [*metric["conditions"].values(), metric["grounding_gap"]]:
            assert summary["n"] == metric["n"] > 0
            assert set(summary) >= {"mean", "std", "ci95", "n"}
            assert summary["ci95"][0] <= summary["mean"] <= summary["ci95"][1]
    loglik = report["metrics"]["answer_loglik"]
    assert loglik["n"] == 5
    assert all(c["mean"] < 0 and c["perplexity"] > 1 for c in loglik["conditions"].values())
    assert report["metrics"]["latentqa_recovery"]["scorer"]["kind"] == "lexical"
    assert "TRAIN split" in report["metrics"]["recovery_seen"]["notes"][0]
    assert set(report["metrics"]["feature_extraction"]["by_relation"]) == {
        "country_capital",
        "element_symbol",
    }
    assert report["decoder"]["read_layer"] == READ_LAYER
    assert info["metrics"]["answer_loglik"]["n"] == 5


def test_outputs_tables_plots_predictions(evaluated):
    workdir, _ = evaluated
    tables = (workdir / "tables.md").read_text()
    assert "grounding gap" in tables and "text_only" in tables
    assert (workdir / "plot_overview.png").stat().st_size > 1000
    assert (workdir / "plot_feature_extraction.png").exists()
    records = [json.loads(line) for line in (workdir / "predictions.jsonl").open()]
    report = json.loads((workdir / "eval.json").read_text())
    assert len(records) == sum(m["n"] for m in report["metrics"].values()) * len(CONDITIONS)
    shuffled = [r for r in records if r["condition"] == "shuffled"]
    assert shuffled and all(r["donor"] != r["item"] for r in shuffled)
    generated = [r for r in records if r["metric"] == "recovery_heldout"]
    assert all(isinstance(r["prediction"], str) and r["score"] in (0.0, 1.0) for r in generated)


@pytest.fixture(scope="module")
def decoder(stage_inputs):
    manifest = json.loads((stage_inputs["train"] / store.MANIFEST).read_text())
    model, tokenizer = load_decoder(
        stage_inputs["model"], stage_inputs["train"] / "adapter", manifest, device="cpu"
    )
    return model, tokenizer, DecoderSettings.from_manifest(manifest)


def _items():
    texts = ["I like green tea", "My dog runs fast in the park", "We sail at dawn"]
    return [
        Item(f"i{k}", f"g{k}", dialog_key([{"role": "user", "content": t}], 0), "Who", "Me")
        for k, t in enumerate(texts)
    ]


def test_shuffled_uses_other_items_activations(decoder):
    model, tokenizer, settings = decoder
    items = _items()
    computed = compute_reads(
        model,
        tokenizer,
        [([{"role": r, "content": c} for r, c in m], k) for m, k in (it.dialog for it in items)],
        settings,
    )
    reads = {it.dialog: r for it, r in zip(items, computed, strict=True)}
    perm = derangement([it.group for it in items], 0)
    true_ex, true_acts, _ = condition_inputs("true", items, reads, perm, tokenizer, settings, True)
    ex, acts, donors = condition_inputs("shuffled", items, reads, perm, tokenizer, settings, True)
    for i, item in enumerate(items):
        donor = items[perm[i]]
        assert donors[i] == donor.id != item.id
        assert torch.equal(acts[i], reads[donor.dialog].acts)
        assert not torch.equal(acts[i], true_acts[i][: len(acts[i])])
        # The placeholders are the donor's, the question and the answer the item's own.
        assert len(ex[i].placeholder_positions) == len(reads[donor.dialog].read_positions)
        assert ex[i].labels[-5:] == true_ex[i].labels[-5:]


def test_text_only_has_no_placeholders_and_no_activations(decoder):
    model, tokenizer, settings = decoder
    items = _items()
    computed = compute_reads(
        model,
        tokenizer,
        [([{"role": r, "content": c} for r, c in m], k) for m, k in (it.dialog for it in items)],
        settings,
    )
    reads = {it.dialog: r for it, r in zip(items, computed, strict=True)}
    ex, acts, _ = condition_inputs("text_only", items, reads, [1, 2, 0], tokenizer, settings, True)
    for example, act, item in zip(ex, acts, items, strict=True):
        read = reads[item.dialog]
        assert example.placeholder_positions == [] and act.shape[0] == 0
        text = tokenizer.decode(example.input_ids)
        assert item.dialog[0][0][1] in text  # the read dialog's own words are in the prompt
        # Exactly the read tokens stand where the placeholders would be, at the same positions;
        # the only "?" left are the acknowledgement's and the question's own.
        with_acts = build_decoder_example(
            tokenizer, read.read_positions, item.question, item.reference
        )
        slots = with_acts.placeholder_positions
        pid = placeholder_id(tokenizer)
        assert example.input_ids.count(pid) == with_acts.input_ids.count(pid) - len(slots)
        assert [example.input_ids[s] for s in slots] == [
            read.input_ids[p] for p in read.read_positions
        ]
        assert [example.position_ids[s] for s in slots] == read.read_positions
    direct = text_only_example(tokenizer, read, "Who", None, True)
    assert direct.placeholder_positions == [] and all(t == -100 for t in direct.labels)


def test_untrained_condition_is_the_base_model(decoder, stage_inputs):
    from pipeline.mechanism.modeling import load_model

    model, tokenizer, settings = decoder
    items = _items()
    metric = Metric("m", "loglik", "test", items)
    computed = compute_reads(
        model,
        tokenizer,
        [([{"role": r, "content": c} for r, c in m], k) for m, k in (it.dialog for it in items)],
        settings,
    )
    reads = {it.dialog: r for it, r in zip(items, computed, strict=True)}
    params = EvalParams(batch_size=2)
    untrained = evaluate.run_condition(
        model, tokenizer, metric, "untrained", reads, [1, 2, 0], settings, params
    )
    trained = evaluate.run_condition(
        model, tokenizer, metric, "true", reads, [1, 2, 0], settings, params
    )
    base, _ = load_model(stage_inputs["model"])
    plain = evaluate.run_condition(
        base, tokenizer, metric, "true", reads, [1, 2, 0], settings, params
    )
    for u, t, p in zip(untrained, trained, plain, strict=True):
        assert u["nll"] == pytest.approx(p["nll"], rel=1e-5)
        assert u["nll"] != pytest.approx(t["nll"], rel=1e-3)
