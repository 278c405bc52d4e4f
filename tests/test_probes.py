"""The probes stage: the truth task finds a planted truth direction through its own pairing and
normalisation; the whole stage on a tiny random model writes every reader for every block, the
decoder's accuracy on the same eval items beside them."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import REPO
from test_evaluate import make_train_artifact
from test_layer_cache import build

from pipeline.analysis import labels, truth
from pipeline.analysis.params import LayerCacheParams, ProbeParams
from pipeline.analysis.probes import best_layer, run
from pipeline.analysis.prompting import decoder_yes_minus_no, first_token, load_reader_model
from pipeline.analysis.summary import probes_table
from pipeline.data.relations import load_relations
from pipeline.data.schema import write_dialogs
from pipeline.data.statements import StatementParams, contrast_pairs
from pipeline.data.statements import run as run_statements

PARAMS = ProbeParams(ccs_restarts=2, ccs_steps=60, random_directions=5, min_labels=2, bootstrap=20)


class PlantedCache:
    """Statement features with the truth along one direction at block 1 only."""

    layers = [0, 1]

    def __init__(self, rows, d=16):
        g = torch.Generator().manual_seed(0)
        self.x = {}
        topics = {}
        for row in rows:
            topic = topics.setdefault(row["label"], 3 * torch.randn(d, generator=g))
            sign = 1.0 if row["qa"][0]["answer"] == "Yes." else -1.0
            noise = 0.5 * torch.randn(d, generator=g)
            self.x[row["id"]] = (topic + noise, topic + noise + 2.0 * sign * torch.eye(d)[5])

    def features(self, pooling, layer, ids):
        return torch.stack([self.x[i][layer] for i in ids])


def test_truth_readers_find_a_planted_direction_at_its_block_only():
    rows = contrast_pairs(load_relations(REPO / "data" / "relations.yaml"), StatementParams())
    for i, row in enumerate(rows):
        row["id"] = f"s{i}"
    pairs = truth.contrast_pairs(rows, seed=0)
    result = truth.layer_readers(PlantedCache(rows), pairs, PARAMS)
    acc = {m: {k: v["eval"]["mean"] for k, v in r.items()} for m, r in result.items()}
    assert acc["logistic"]["1"] > 0.95 and acc["ccs"]["1"] > 0.95
    assert acc["random"]["1"] < acc["logistic"]["1"] - 0.15
    assert acc["random"]["1"] < acc["ccs"]["1"] - 0.15
    # Block 0 holds no truth: every reader is near chance there.
    assert all(0.25 < acc[m]["0"] < 0.75 for m in acc)
    assert best_layer({"per_layer": result}, "validation") == 1


def persona_rows():
    families = {
        "What persona is the assistant adopting?": [f"A person of trade {i}." for i in range(10)],
        "What goal is the assistant pursuing?": [f"To reach target {i}." for i in range(10)],
    }
    rows = []
    for question, answers in families.items():
        for i, answer in enumerate(answers):
            for stimulus in ("Tell me about your day.", "What should I cook?"):
                rows.append(
                    {
                        "label": f"{answer.split()[2]}-{i}",
                        "kind": "system",
                        "messages": [
                            {"role": "system", "content": f"Be this: {answer}"},
                            {"role": "user", "content": stimulus},
                        ],
                        "n_masked_turns": 1,
                        "qa": [{"question": question, "answer": answer}],
                        "source": "template",
                        "split": ("train", "train", "train", "validation", "eval")[i % 5],
                    }
                )
    rows.append(
        {**rows[0], "label": "scenario-x", "qa": [{"question": "Where?", "answer": "Here."}]}
    )
    return rows


@pytest.fixture(scope="module")
def probed(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("probes")
    (root / "statements").mkdir()
    run_statements(
        StatementParams(relations=["country_capital", "city_country"], max_facts_per_relation=12),
        {"relations": REPO / "data" / "relations.yaml"},
        root / "statements",
        {},
    )
    (root / "data").mkdir()
    write_dialogs(persona_rows(), root / "data" / "dialogs.parquet")
    inputs = {
        "model": tiny_model_dir,
        "statements": root / "statements",
        "statements_cache": root / "statements_cache",
        "data": root / "data",
        "dialogs_cache": root / "dialogs_cache",
        "train": make_train_artifact(root, tiny_model_dir),
    }
    build(inputs["statements_cache"], root / "statements", tiny_model_dir, {})
    build(inputs["dialogs_cache"], root / "data", tiny_model_dir, {"items": "controlled"})
    assert LayerCacheParams().pooling == ["last", "mean"]
    out = root / "out"
    out.mkdir()
    info: dict = {}
    run(PARAMS, inputs, out, info)
    return json.loads((out / "probes.json").read_text()), out, info


def test_every_reader_for_every_block_with_intervals(probed):
    report, out, info = probed
    assert report["layers"] == [0, 1, 2, 3] and (out / "probes.png").stat().st_size > 0
    for name, methods in (
        ("truth", {"logistic", "ccs", "random"}),
        ("labels", {"logistic", "random"}),
    ):
        task = report["tasks"][name]
        assert set(task["per_layer"]) == methods
        for per_layer in task["per_layer"].values():
            assert set(per_layer) == {"0", "1", "2", "3"}
            for split in ("validation", "eval"):
                s = per_layer["2"][split]
                assert 0 <= s["ci95"][0] <= s["mean"] <= s["ci95"][1] <= 1
    truth_task = report["tasks"]["truth"]
    assert {"zero_shot", "decoder"} <= set(truth_task)
    assert truth_task["decoder"]["eval"]["n"] == truth_task["n_pairs"]["eval"]
    assert truth_task["decoder"]["layer"] == 2
    answer_state = truth_task["decoder"]["answer_state"]["eval"]
    assert answer_state["n"] == truth_task["n_pairs"]["eval"]
    assert 0 <= answer_state["ci95"][0] <= answer_state["mean"] <= answer_state["ci95"][1] <= 1
    table = "\n".join(probes_table(report, [2]))
    assert "| probe of the decoder's answer state | block 2 |" in table
    assert info["best_layer"].keys() == {"truth", "labels"}


def test_label_task_chooses_among_held_out_labels_of_the_same_question(probed):
    report, _, _ = probed
    task = report["tasks"]["labels"]
    # 10 labels per question: 6 train, 2 validation, 2 eval (by i % 5); the scenario drops out.
    assert task["n_labels"] == 20 and task["chance"]["eval"] == pytest.approx(0.5)
    assert task["n_items"] == {"train": 24, "validation": 8, "eval": 8}
    assert task["decoder"]["eval"]["n"] == 8


def test_build_task_options_share_question_and_split():
    rows = persona_rows()
    for i, row in enumerate(rows):
        row["id"] = f"d{i}"
    task = labels.build_task(rows, {r["id"] for r in rows}, PARAMS)
    for split, items in task.items.items():
        for item in items:
            assert item["target"] in item["options"]
            for option in item["options"]:
                assert task.questions[option] == item["qa"][0]["question"]
                assert option in {it["target"] for it in items} or split == "train"


def test_held_out_candidates_are_capped_and_hold_the_target():
    rows = persona_rows()[:-1]
    for i, row in enumerate(rows):
        n = int(row["label"].rsplit("-", 1)[1])
        row["id"] = f"d{i}"
        row["split"] = "validation" if n % 5 == 0 else ("eval" if n % 2 else "train")
    params = ProbeParams(min_labels=2, label_candidates=3)
    task = labels.build_task(rows, {r["id"] for r in rows}, params)
    assert len(task.items["eval"]) == 16
    for item in task.items["eval"]:
        assert len(item["options"]) == 3 and item["target"] in item["options"]
    assert labels.chance(task, "eval") == pytest.approx(1 / 3)


def test_the_answer_state_is_what_the_yes_no_margin_is_projected_from(tmp_path, tiny_model_dir):
    # The probe of the answer state is the decoder's answer bar its readout: the Yes - No margin
    # must be that state times the two tokens' unembedding difference, row by row.
    train = make_train_artifact(tmp_path, tiny_model_dir)
    model, tokenizer, settings = load_reader_model(
        {"model": tiny_model_dir, "train": train}, "float32", "cpu"
    )
    dialogs = [([{"role": "user", "content": text}], 0) for text in
               ("Paris is in France.", "Paris is in Peru.", "The sky is green today.")]  # fmt: skip
    margins, states = decoder_yes_minus_no(model, tokenizer, settings, dialogs, "True?", 2)
    head = model.get_output_embeddings().weight.detach().float()
    yes, no = first_token(tokenizer, "Yes"), first_token(tokenizer, "No")
    assert states.shape == (3, head.shape[1])
    assert torch.allclose(states @ (head[yes] - head[no]), torch.tensor(margins), atol=1e-4)
    assert not torch.allclose(states[0], states[1])  # each row its own dialog's state
