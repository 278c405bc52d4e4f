"""The evaluation stage on a tiny random model with a tiny random adapter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import REPO

from pipeline.core import store
from pipeline.core.stats import derangement
from pipeline.data.schema import write_dialogs
from pipeline.evaluation import conditions, evaluate
from pipeline.evaluation.conditions import CONDITIONS, condition_inputs, text_only_example
from pipeline.evaluation.items import Item, Metric, dialog_key
from pipeline.evaluation.params import EvalParams
from pipeline.mechanism.decoder_files import load_decoder
from pipeline.mechanism.decoder_prompt import build_decoder_example, placeholder_id
from pipeline.mechanism.decoder_settings import DecoderSettings
from pipeline.mechanism.reading import compute_reads

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
  subject_type: country
  question: What is the capital of the country mentioned?
  subject_question: Which country is mentioned?
  cloze: The capital of that country is
  sentences:
  - My cousin just got back from {subject}.
  facts:
  - {subject: France, object: Paris}
  - {subject: Japan, object: Tokyo}
  - {subject: Peru, object: Lima}
  - {subject: Norway, object: Oslo}
- name: element_symbol
  subject_type: element
  question: What is the chemical symbol of the element mentioned?
  subject_question: Which element is mentioned?
  cloze: Its symbol is
  case_sensitive: true
  sentences: ["I read about {subject} today."]
  facts:
  - {subject: gold, object: Au}
  - {subject: iron, object: Fe}
- name: city_country
  subject_type: city
  question: In which country is the city mentioned?
  subject_question: Which city is mentioned?
  cloze: That city is in
  sentences: ["We flew to {subject} last year."]
  facts:
  - {subject: Lyon, object: France}
"""
EVAL_RELATIONS = ["country_capital", "element_symbol"]


def make_train_artifact(
    root: Path,
    model_dir: Path,
    read_layers: tuple[int, ...] = (READ_LAYER,),
    write_layer: int | None = 0,
    choice: dict | None = None,
    name: str = "train",
    all_layers: bool = False,
) -> Path:
    """A train artifact as the train stage publishes it: adapter/ and a manifest with params
    (and, for several read layers, the layer choice ``choice`` given as family -> layer ->
    validation loss)."""
    from pipeline.mechanism.lora import add_lora
    from pipeline.mechanism.modeling import load_model

    model, _ = load_model(model_dir)
    peft_model = add_lora(model, r=4, alpha=8, dropout=0.0, seed=1)
    generator = torch.Generator().manual_seed(7)  # the same adapter whatever ran before
    with torch.no_grad():  # a fresh LoRA is the identity; make the decoder differ from the base
        for weight, param in peft_model.named_parameters():
            if "lora_B" in weight:
                param.normal_(0, 0.05, generator=generator)
    train = root / name
    peft_model.save_pretrained(train / "adapter")
    if choice is not None:
        from pipeline.mechanism import layer_choice

        layer_choice.write(
            layer_choice.LayerChoice(losses=choice, layers=list(read_layers)), train / "adapter"
        )
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
            "read_layers": list(read_layers),
            "read_all_layers": all_layers,
            "write_layer": write_layer,
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
        "synonyms": REPO / "data" / "synonyms.yaml",
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
        max_relation_items=5,
        eval_relations=EVAL_RELATIONS,
        similarity="token_f1",
        bootstrap=50,
    )
    info: dict = {}
    evaluate.run(params, stage_inputs, workdir, info)
    return workdir, info


def test_eval_json_has_every_metric_under_every_condition(evaluated):
    workdir, info = evaluated
    report = json.loads((workdir / "eval.json").read_text())
    recovery = {f"recovery_{s}{x}" for s in ("heldout", "seen") for x in ("", "_concept")}
    recovery |= {"recovery_heldout_similarity", "recovery_seen_similarity"}
    expected = {"answer_loglik", "latentqa_loglik", "latentqa_recovery", *recovery}
    expected |= {"feature_extraction", "subject_identification", "truth", "truth_debiased"}
    expected |= {"truth_pairwise"}
    assert set(report["metrics"]) == expected
    truth = report["metrics"]["truth"]
    assert truth["kind"] == "choice" and truth["chance"] == 0.5 and truth["n"] % 2 == 0
    debiased = report["metrics"]["truth_debiased"]
    assert debiased["kind"] == "debiased" and debiased["n"] == truth["n"]
    pairwise = report["metrics"]["truth_pairwise"]
    assert pairwise["kind"] == "pairwise" and pairwise["n"] == truth["n"] // 2
    rows = [
        json.loads(line)
        for line in (workdir / "predictions.jsonl").read_text().splitlines()
        if '"metric": "truth"' in line
    ]
    # Each condition's debiased picks split at its own median preference: half each way.
    for cond in CONDITIONS:
        these = [r for r in rows if r["condition"] == cond]
        assert len(these) == truth["n"]
        if len({r["margin"] for r in these}) < len(these):
            continue  # ties score 0.5 each
        picked_yes = [(r["debiased"] == 1.0) == (r["reference"] == "Yes.") for r in these]
        assert sum(picked_yes) == len(these) // 2, cond
        # One pairwise score per contrast pair, from its two margins.
        by_pair: dict[str, dict[str, float]] = {}
        for r in these:
            by_pair.setdefault(r["item"].rsplit(":", 1)[0], {})[r["reference"]] = r["margin"]
        expected_pairs = sorted(
            0.5 if m["Yes."] == m["No."] else float(m["Yes."] > m["No."]) for m in by_pair.values()
        )
        assert sorted(r["pairwise"] for r in these if r["pairwise"] is not None) == expected_pairs
    assert report["metrics"]["recovery_heldout"]["kind"] == "match"
    assert report["metrics"]["recovery_heldout_concept"]["kind"] == "concept"
    assert report["metrics"]["feature_extraction"]["kind"] == "entity"
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
    for name in ("feature_extraction", "subject_identification"):
        assert set(report["metrics"][name]["by_relation"]) == set(EVAL_RELATIONS)
        assert report["metrics"][name]["n"] == 5  # the cap, balanced over the two relations
    assert report["decoder"]["read_layer"] == READ_LAYER
    assert info["metrics"]["answer_loglik"]["n"] == 5


def _evaluate_two_layers(stage_inputs, tmp_path, scope: str) -> tuple[dict, Path]:
    """eval.json and the output folder of a decoder reading blocks 1 and 2, scored at ``scope``."""
    train = tmp_path / "train2"
    if not train.exists():
        make_train_artifact(
            tmp_path,
            stage_inputs["model"],
            read_layers=(1, 2),
            write_layer=None,
            choice={"template": {1: 2.0, 2: 1.0}, "relation_qa": {1: 0.5, 2: 3.0}},
            name="train2",
        )
    params = EvalParams(
        batch_size=4,
        max_new_tokens=3,
        relation_tokens=3,
        max_loglik_items=4,
        max_recovery_items=2,
        max_latentqa_items=2,
        max_relation_items=4,
        eval_relations=EVAL_RELATIONS,
        similarity="token_f1",
        bootstrap=20,
        layers=scope,
    )
    out = tmp_path / f"out_{scope}"
    out.mkdir()
    evaluate.run(params, {**stage_inputs, "train": train}, out, {})
    return json.loads((out / "eval.json").read_text()), out


def test_a_decoder_of_two_layers_is_evaluated_at_each_and_reported_at_the_chosen_one(
    stage_inputs, tmp_path
):
    """``layers: all``: every metric under the reading conditions at both layers (text-only
    once), its top-level figures at the layer the validation split chose for its family."""
    report, out = _evaluate_two_layers(stage_inputs, tmp_path, "all")
    assert report["layers"] == [1, 2]
    metrics = report["metrics"]
    assert metrics["answer_loglik"]["layer"] == 2  # template's lowest validation loss
    assert metrics["feature_extraction"]["layer"] == 1  # relation_qa's
    assert metrics["latentqa_loglik"]["layer"] == 2  # no latentqa family: the persona dialogs'
    for name, metric in metrics.items():
        assert set(metric["by_layer"]) == {"1", "2"}, name
        at = metric["by_layer"][str(metric["layer"])]
        assert metric["conditions"] == at["conditions"], name
        one, two = (metric["by_layer"][k]["conditions"] for k in ("1", "2"))
        assert one["text_only"] == two["text_only"]  # reads no layer
    loglik = metrics["answer_loglik"]["by_layer"]
    assert loglik["1"]["conditions"]["true"]["mean"] != loglik["2"]["conditions"]["true"]["mean"]
    records = [json.loads(line) for line in (out / "predictions.jsonl").open()]
    layers = {(r["condition"], r["layer"]) for r in records if r["metric"] == "answer_loglik"}
    assert layers == {("text_only", None)} | {
        (c, layer) for c in ("true", "shuffled", "untrained") for layer in (1, 2)
    }
    tables = (out / "tables.md").read_text()
    assert "## By read layer" in tables and "block 1: true" in tables


def test_the_default_scope_scores_each_metric_only_at_its_chosen_layer(stage_inputs, tmp_path):
    """``layers: chosen`` (the default) gives the same reported figures as ``all`` without the
    other layer's runs."""
    chosen, out = _evaluate_two_layers(stage_inputs, tmp_path, "chosen")
    every, _ = _evaluate_two_layers(stage_inputs, tmp_path, "all")
    assert chosen["layers_scored"] == "chosen" and every["layers_scored"] == "all"
    for name, metric in chosen["metrics"].items():
        assert set(metric["by_layer"]) == {str(metric["layer"])}, name
        assert metric["layer"] == every["metrics"][name]["layer"], name
        assert metric["conditions"] == every["metrics"][name]["conditions"], name
    records = [json.loads(line) for line in (out / "predictions.jsonl").open()]
    layers = {(r["condition"], r["layer"]) for r in records if r["metric"] == "feature_extraction"}
    assert layers == {("text_only", None)} | {(c, 1) for c in ("true", "shuffled", "untrained")}
    tables = (out / "tables.md").read_text()
    assert "## By read layer" in tables and "not scored there" in tables


def test_a_decoder_reading_every_layer_at_once_is_ablated_layer_by_layer(stage_inputs, tmp_path):
    """Its own figures under "all"; under each layer, the item's activations in that layer's group
    only (the others the donor's), the shuffled condition shared."""
    train = make_train_artifact(
        tmp_path, stage_inputs["model"], (1, 2), None, name="all", all_layers=True
    )
    params = EvalParams(
        batch_size=4,
        max_new_tokens=3,
        relation_tokens=3,
        max_loglik_items=4,
        max_recovery_items=2,
        max_latentqa_items=2,
        max_relation_items=4,
        max_truth_items=4,
        eval_relations=EVAL_RELATIONS,
        similarity="token_f1",
        bootstrap=20,
        layers="all",
    )
    (tmp_path / "out").mkdir()
    evaluate.run(params, {**stage_inputs, "train": train}, tmp_path / "out", {})
    report = json.loads((tmp_path / "out" / "eval.json").read_text())
    loglik = report["metrics"]["answer_loglik"]
    assert loglik["layer"] == "all" and set(loglik["by_layer"]) == {"all", "1", "2"}
    assert loglik["conditions"] == loglik["by_layer"]["all"]["conditions"]
    means = {k: v["conditions"]["true"]["mean"] for k, v in loglik["by_layer"].items()}
    assert len(set(means.values())) == 3  # each ablation reads something else
    shuffled = {k: v["conditions"]["shuffled"]["mean"] for k, v in loglik["by_layer"].items()}
    assert len(set(shuffled.values())) == 1
    assert report["decoder"]["all_layers"] is True


def test_outputs_tables_plots_predictions(evaluated):
    workdir, _ = evaluated
    tables = (workdir / "tables.md").read_text()
    assert "grounding gap" in tables and "text_only" in tables
    assert (workdir / "plot_overview.png").stat().st_size > 1000
    assert (workdir / "plot_feature_extraction.png").exists()
    records = [json.loads(line) for line in (workdir / "predictions.jsonl").open()]
    report = json.loads((workdir / "eval.json").read_text())
    # One record per item and condition of each metric; its scorers share the generations.
    metrics = {r["metric"] for r in records}
    scored = {n for n in report["metrics"] if not any(n.startswith(f"{m}_") for m in metrics)}
    assert scored == metrics
    assert len(records) == sum(report["metrics"][m]["n"] for m in metrics) * len(CONDITIONS)
    assert {r["layer"] for r in records} == {None, READ_LAYER}
    shuffled = [r for r in records if r["condition"] == "shuffled"]
    assert shuffled and all(r["donor"] != r["item"] for r in shuffled)
    generated = [r for r in records if r["metric"] == "recovery_heldout"]
    assert all(r["match"] in (0.0, 1.0) and r["concept"] in (0.0, 1.0) for r in generated)
    assert all(isinstance(r["prediction"], str) and 0 <= r["similarity"] <= 1 for r in generated)


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
    answers = [it.reference for it in items]
    true_ex, true_acts, _ = condition_inputs(
        "true", items, reads, perm, tokenizer, settings, answers
    )
    ex, acts, donors = condition_inputs(
        "shuffled", items, reads, perm, tokenizer, settings, answers
    )
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
    answers = [it.reference for it in items]
    ex, acts, _ = condition_inputs(
        "text_only", items, reads, [1, 2, 0], tokenizer, settings, answers
    )
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
    untrained = conditions.run_condition(
        model, tokenizer, metric, "untrained", reads, [1, 2, 0], settings, params
    )
    trained = conditions.run_condition(
        model, tokenizer, metric, "true", reads, [1, 2, 0], settings, params
    )
    base, _ = load_model(stage_inputs["model"])
    plain = conditions.run_condition(
        base, tokenizer, metric, "true", reads, [1, 2, 0], settings, params
    )
    for u, t, p in zip(untrained, trained, plain, strict=True):
        assert u["nll"] == pytest.approx(p["nll"], rel=1e-5)
        assert u["nll"] != pytest.approx(t["nll"], rel=1e-3)


def _params(**kw) -> EvalParams:
    return EvalParams(eval_relations=EVAL_RELATIONS, max_relation_items=100, **kw)


def test_relation_facts_whose_subject_is_trained_on_are_left_out(stage_inputs):
    from pipeline.evaluation.items import relation_metrics

    clean = relation_metrics(_params(), rows(), stage_inputs["relations"])
    assert [m.name for m in clean] == ["feature_extraction", "subject_identification"]
    assert len(clean[0].items) == 6
    leaky = rows() + [
        {**rows()[0], "messages": [{"role": "user", "content": "I loved Japan and gold."}]}
    ]
    feature, subject = relation_metrics(_params(), leaky, stage_inputs["relations"])
    assert {it.meta["subject"] for it in feature.items} == {"France", "Peru", "Norway", "iron"}
    assert "2 facts left out" in feature.notes[-1]
    # The question names the type only, and the subject question asks for the subject.
    assert all("Japan" not in it.question for it in feature.items + subject.items)
    assert {it.reference for it in subject.items} == {it.meta["subject"] for it in subject.items}
    symbols = [it for it in feature.items if it.meta["relation"] == "element_symbol"]
    assert symbols and all(it.case_sensitive for it in symbols)


@pytest.mark.parametrize(
    "scorer, prediction, hit",
    [
        ("entity", "The symbol is Fe.", True),
        ("entity", "the symbol is fe", False),  # chemical symbols keep their case
        ("match", "the symbol is fe", True),  # the lenient scorer does not
        ("concept", "A keeper of the lighthouse.", True),
        ("match", "A keeper of the lighthouse.", False),
    ],
)
def test_scorers(scorer, prediction, hit):
    reference = "A retired lighthouse keeper." if "keeper" in prediction else "Fe"
    item = Item("i", "g", ((("user", "x"),), 0), "q", reference, case_sensitive=True)
    scores = conditions.score_rows(scorer, [item], [{"prediction": prediction}], None, {})
    assert scores == [float(hit)]
