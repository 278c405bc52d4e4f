"""The reading curve stage on a tiny random model: the evaluation's items at every published
adapter, step 0 being the base model; for a decoder of one read layer, of two (each metric at the
layer the evaluation reported it at) and of two read at once."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import REPO
from test_evaluate import EVAL_RELATIONS, RELATIONS, make_train_artifact, rows

from pipeline.core import stage, store
from pipeline.data.schema import write_dialogs
from pipeline.evaluation import curve, evaluate
from pipeline.evaluation.params import EvalParams
from pipeline.training.checkpoint_adapters import step_folder

EVAL = {
    "batch_size": 4,
    "max_new_tokens": 4,
    "relation_tokens": 5,
    "max_loglik_items": 5,
    "max_recovery_items": 3,
    "max_relation_items": 5,
    "eval_relations": EVAL_RELATIONS,
    "similarity": "token_f1",
    "bootstrap": 20,
}


def _zero_adapter(source, target) -> None:
    """A copy of an adapter whose LoRA B matrices are zero: the identity, as LoRA starts."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(source, target)
    weights = load_file(str(target / "adapter_model.safetensors"))
    zeroed = {k: torch.zeros_like(v) if "lora_B" in k else v for k, v in weights.items()}
    save_file(zeroed, str(target / "adapter_model.safetensors"))


DECODERS = {
    "one_layer": {},
    "two_layers": {
        "read_layers": (1, 2),
        "write_layer": None,
        "choice": {"template": {1: 2.0, 2: 1.0}, "relation_qa": {1: 0.5, 2: 3.0}},
    },
    "all_layers": {"read_layers": (1, 2), "write_layer": None, "all_layers": True},
}


def _run_curve(root, tiny_model_dir, decoder: dict, evaluation: dict, params):
    """Train artifact with adapters at steps 1 (the identity) and 2, its evaluation, its curve."""
    (root / "data").mkdir()
    write_dialogs(rows(), root / "data" / "dialogs.parquet")
    relations = root / "relations.yaml"
    relations.write_text(RELATIONS)
    train = make_train_artifact(root, tiny_model_dir, **decoder)
    along = train / "checkpoint_adapters"
    _zero_adapter(train / "adapter", along / step_folder(1))
    shutil.copytree(train / "adapter", along / step_folder(2))
    inputs = {
        "model": tiny_model_dir,
        "train": train,
        "data": root / "data",
        "relations": relations,
        "synonyms": REPO / "data" / "synonyms.yaml",
    }
    evaluated = root / "evaluate"
    evaluated.mkdir()
    evaluate.run(EvalParams(**evaluation), inputs, evaluated, {})
    store.write_manifest(evaluated, "2" * 16, "evaluate", evaluation, {})
    out = root / "curve_out"
    out.mkdir()
    info: dict = {}
    curve.run(params, {**inputs, "evaluate": evaluated}, out, info)
    return out, evaluated, info


@pytest.fixture(scope="module", params=list(DECODERS))
def curve_run(request, tmp_path_factory, tiny_model_dir):
    params = curve.CurveParams(max_items=3, conditions=["true", "shuffled", "text_only"])
    return _run_curve(
        tmp_path_factory.mktemp("curve"), tiny_model_dir, DECODERS[request.param], EVAL, params
    )


def test_every_published_step_and_the_start_are_scored(curve_run):
    out, _, info = curve_run
    report = json.loads((out / "curve.json").read_text())
    assert report["steps"] == [0, 1, 2] == info["steps"]
    # The reading metrics, with every scorer of each (latentqa_loglik is not one of them).
    assert set(report["metrics"]) == {
        "answer_loglik",
        "recovery_heldout",
        "recovery_heldout_concept",
        "recovery_heldout_similarity",
        "feature_extraction",
        "subject_identification",
        "latentqa_recovery",
    }
    for name, metric in report["metrics"].items():
        assert metric["n"] == len(metric["items"]) <= 3, name
        assert [p["step"] for p in metric["points"]] == [0, 1, 2]
        for point in metric["points"]:
            assert set(point["conditions"]) == {"true", "shuffled", "text_only"}
            assert point["grounding_gap"]["n"] == metric["n"]
    assert report["metrics"]["recovery_heldout_concept"]["kind"] == "concept"
    assert report["metrics"]["answer_loglik"]["kind"] == "loglik"
    assert report["seconds"]["total"] >= report["seconds"]["reads"]


def test_each_metric_is_scored_at_the_layer_the_evaluation_reported(curve_run):
    out, evaluated, _ = curve_run
    report = json.loads((out / "curve.json").read_text())
    reported = json.loads((evaluated / "eval.json").read_text())
    for name, metric in report["metrics"].items():
        assert metric["layer"] == reported["metrics"][name]["layer"], name
    layers = {m["layer"] for m in report["metrics"].values()}
    assert layers in ({2}, {1, 2}, {"all"})
    if len(reported["layers"]) > 1 and not reported["decoder"]["all_layers"]:
        assert layers == {1, 2}  # relation questions at block 1, the persona ones at block 2
    records = [json.loads(line) for line in (out / "curve_predictions.jsonl").open()]
    for r in records:
        expected = (
            None if r["condition"] == "text_only" else report["metrics"][r["metric"]]["layer"]
        )
        assert r["layer"] == expected


def test_step_zero_is_the_base_model_and_the_last_step_the_evaluated_decoder(curve_run):
    out, evaluated, _ = curve_run
    records = [json.loads(line) for line in (out / "curve_predictions.jsonl").open()]
    loglik = {
        (r["step"], r["item"], r["condition"]): r["score"]
        for r in records
        if r["metric"] == "answer_loglik"
    }
    keys = [k for k in loglik if k[0] == 0]
    assert keys
    for _, item, condition in keys:
        # LoRA starts as the identity: a zero adapter reads as the base model (adapter off).
        assert loglik[(1, item, condition)] == pytest.approx(loglik[(0, item, condition)], abs=1e-4)
    assert any(abs(loglik[(2, i, c)] - loglik[(0, i, c)]) > 1e-3 for _, i, c in keys)
    # The last step is the final adapter: its answers are the evaluation's, item for item.
    final = {
        (r["metric"], r["item"], r["condition"], r["layer"]): r
        for r in map(json.loads, (evaluated / "predictions.jsonl").open())
    }
    compared = 0
    for r in records:
        # (the shuffled donors are drawn among the subset's items, not all the evaluation's)
        if r["step"] == 2 and r["condition"] != "shuffled":
            own = final[(r["metric"], r["item"], r["condition"], r["layer"])]
            if "prediction" in r:
                assert r["prediction"] == own["prediction"]
            else:
                assert r["score"] == pytest.approx(own["score"], abs=1e-4)
            compared += 1
    assert compared == sum(1 for r in records if r["step"] == 0 and r["condition"] != "shuffled")


def test_the_all_layers_scope_adds_every_other_read_layer(tmp_path, tiny_model_dir):
    """``layers: all``: each metric at its reported layer under its own name, and at the other
    read layer as ``<metric>@<layer>`` (true and shuffled; text reads no layer), whose last step
    scores each item as an all-layer evaluation does at that layer."""
    params = curve.CurveParams(
        max_items=3, conditions=["true", "shuffled", "text_only"], layers="all"
    )
    evaluation = {**EVAL, "layers": "all"}
    out, evaluated, _ = _run_curve(
        tmp_path, tiny_model_dir, DECODERS["two_layers"], evaluation, params
    )
    report = json.loads((out / "curve.json").read_text())
    reported = json.loads((evaluated / "eval.json").read_text())["metrics"]
    own = [name for name in report["metrics"] if "@" not in name]
    assert "answer_loglik" in own and "subject_identification" in own
    for name in own:
        layer = report["metrics"][name]["layer"]
        assert layer == reported[name]["layer"], name
        other = ({1, 2} - {layer}).pop()
        at_other = report["metrics"][f"{name}@{other}"]
        assert at_other["layer"] == other and at_other["items"] == report["metrics"][name]["items"]
        for point in at_other["points"]:
            assert set(point["conditions"]) == {"true", "shuffled"}
    assert len(report["metrics"]) == 2 * len(own)
    final = {
        (r["metric"], r["item"], r["condition"], r["layer"]): r
        for r in map(json.loads, (evaluated / "predictions.jsonl").open())
    }
    records = [json.loads(line) for line in (out / "curve_predictions.jsonl").open()]
    at_layers = {(r["metric"], r["layer"]) for r in records if r["condition"] == "true"}
    assert {layer for _, layer in at_layers} == {1, 2}
    for r in records:
        if r["step"] == 2 and r["condition"] == "true" and r["metric"] == "answer_loglik":
            expected = final[(r["metric"], r["item"], "true", r["layer"])]["score"]
            assert r["score"] == pytest.approx(expected, abs=1e-4)


def test_conditions_are_checked():
    with pytest.raises(stage.ParamsError, match=r"conditions\[1\]: 'untrained' is not one of"):
        stage.build_params(curve.CurveParams, {"conditions": ["true", "untrained"]})
    with pytest.raises(stage.ParamsError, match="conditions.*must include true"):
        stage.build_params(curve.CurveParams, {"conditions": ["shuffled"]})


def test_a_train_artifact_without_published_adapters_is_refused(tmp_path, tiny_model_dir):
    train = make_train_artifact(tmp_path, tiny_model_dir)
    inputs = {name: tmp_path for name in ("model", "evaluate", "data", "relations", "synonyms")}
    with pytest.raises(SystemExit, match="adapter_every"):
        curve.run(curve.CurveParams(), {**inputs, "train": train}, tmp_path, {})
