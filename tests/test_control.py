"""Decoder-guided steering: two adapters in one graph, gradients reach the steer LoRA only."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from conftest import build_tiny_model
from safetensors.torch import load_file

from pipeline.control import control
from pipeline.control.control import ControlParams, score, summarize, train_steer
from pipeline.control.inputs import control_target, load_prompts, load_target
from pipeline.control.rig import DECODER, STEER, Rig, attach_adapters, steer_parameters, use_adapter
from pipeline.core import store
from pipeline.data.schema import DataError
from pipeline.mechanism.decoder import answer_loss, collate
from pipeline.mechanism.decoder_settings import DecoderSettings
from pipeline.mechanism.lora import add_lora

READ_LAYER = 2
SETTINGS = {"read_layer": READ_LAYER, "write_layer": 0, "positions": "all", "align_positions": True}
PROMPTS = [
    "Tell me about your morning.",
    "What is your favorite animal?",
    "Describe a storm.",
    "How can I stay healthy?",
    "What makes you laugh?",
    "Describe a busy market.",
]
TARGETS = {
    "targets": [
        {
            "label": "target-pirate",
            "description": "Talk like a pirate who loves the sea.",
            "qa": [
                {"question": "What persona is the assistant adopting?", "answer": "A pirate."},
                {"question": "What does the assistant love?", "answer": "The sea."},
            ],
        },
    ]
}


def decoder_artifact(path, family, tokenizer, params=None):
    """A train artifact: a decoder adapter with random (non-zero) LoRA weights and a manifest."""
    model = add_lora(build_tiny_model(family, tokenizer), r=4, alpha=8, dropout=0.0)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(1)
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.1)
    path.mkdir(parents=True)
    model.save_pretrained(str(path / "adapter"))
    store.write_manifest(path, "k" * 16, "train", params or SETTINGS, {})
    return path


@pytest.fixture(params=["llama", "qwen2"])
def setup(request, tokenizer, tmp_path):
    family = request.param
    train_dir = decoder_artifact(tmp_path / "train", family, tokenizer)
    model = attach_adapters(
        build_tiny_model(family, tokenizer), train_dir / "adapter", READ_LAYER, r=4, alpha=8, seed=0
    )
    rig = Rig(model, tokenizer, DecoderSettings(**SETTINGS))
    reads, examples = rig.examples(PROMPTS, TARGETS["targets"][0]["qa"])
    return rig, reads, examples


def _state(model, keep):
    return {n: p.detach().clone() for n, p in model.named_parameters() if keep(n)}


def test_steer_adapter_only_on_blocks_up_to_read_layer(setup):
    model = setup[0].model
    names = [n for n, _ in model.named_parameters() if f".{STEER}." in n]
    layers = {int(n.split(".layers.")[1].split(".")[0]) for n in names}
    assert layers == set(range(READ_LAYER + 1))
    assert all(p.requires_grad == (f".{STEER}." in n) for n, p in model.named_parameters())


def _randomize_steer(model):
    """B starts at zero (steered == unsteered); give it a value so that A gets a gradient too."""
    with torch.no_grad():
        for p in steer_parameters(model):
            p.normal_(0, 0.05)


def test_gradient_reaches_only_the_steer_adapter(setup):
    rig, reads, examples = setup
    _randomize_steer(rig.model)
    with rig.target("steered"):
        acts = rig.read(reads[:3], [READ_LAYER])[READ_LAYER]
    rig.decoder_loss([ex[0] for ex in examples[:3]], acts).backward()
    steer = steer_parameters(rig.model)
    assert steer and all(p.grad is not None and p.grad.abs().sum() > 0 for p in steer)
    others = [p for n, p in rig.model.named_parameters() if f".{STEER}." not in n]
    assert all(p.grad is None for p in others)


def test_naive_adapter_switch_would_drop_steer_gradients(setup, tokenizer):
    """Why use_adapter exists: PEFT's default set_adapter freezes the steer weights mid-graph."""
    rig, reads, examples = setup
    rig.model.set_adapter(STEER)
    acts = rig.read(reads[:2], [READ_LAYER])[READ_LAYER]
    rig.model.set_adapter(DECODER)
    batch = collate([ex[0] for ex in examples[:2]], acts, tokenizer.pad_token_id)
    answer_loss(rig.model, batch).backward()
    assert all(p.grad is None for p in steer_parameters(rig.model))


def test_adapters_switch_between_target_and_decoder(setup):
    rig, reads, _ = setup
    ids = torch.tensor([reads[0].input_ids])
    _randomize_steer(rig.model)
    with torch.no_grad():
        logits = {}
        for mode in ("steered", "unsteered"):
            with rig.target(mode):
                logits[mode] = rig.model(input_ids=ids).logits
        use_adapter(rig.model, DECODER)
        logits["decoder"] = rig.model(input_ids=ids).logits
    pairs = [("steered", "unsteered"), ("decoder", "unsteered"), ("steered", "decoder")]
    assert not any(torch.allclose(logits[a], logits[b]) for a, b in pairs)


@pytest.mark.parametrize("per_layer", [False, True])
def test_training_changes_only_steer_and_lowers_the_decoder_loss(setup, per_layer):
    rig, reads, examples = setup
    frozen = _state(rig.model, lambda n: f".{STEER}." not in n)
    params = ControlParams(steps=8, lr=1e-2, batch_size=4, per_layer_loss=per_layer)

    def held_out_loss(mode):
        return summarize(score(rig, reads, examples, mode, 3))["answer_nll_per_token"]

    before = held_out_loss("steered")
    assert before == pytest.approx(held_out_loss("unsteered"), abs=1e-5)  # B = 0 at init
    history = train_steer(rig, reads, examples, params)
    assert len(history) == 8 and all(h["grad_norm"] > 0 for h in history)
    after = _state(rig.model, lambda n: f".{STEER}." not in n)
    assert after.keys() == frozen.keys()
    assert all(torch.equal(after[n], frozen[n]) for n in frozen)
    assert held_out_loss("steered") < held_out_loss("unsteered") - 0.05


def test_per_layer_loss_trains_each_block_from_its_own_layer(setup):
    rig, reads, examples = setup
    _randomize_steer(rig.model)
    with rig.target("steered"):
        acts = rig.read(reads[:2], list(range(READ_LAYER + 1)), isolate=True)
    rig.decoder_loss([ex[0] for ex in examples[:2]], acts[1]).backward()
    for name, param in rig.model.named_parameters():
        if f".{STEER}." in name:
            layer = int(name.split(".layers.")[1].split(".")[0])
            assert (param.grad is not None) == (layer == 1), name


def test_prompt_split_is_disjoint_and_seeded():
    prompts = [f"p{i}" for i in range(10)]
    train, held = control.split_prompts(prompts, 6, 3, seed=1)
    assert len(train) == 6 and len(held) == 3 and not set(train) & set(held)
    assert control.split_prompts(prompts, 6, 3, seed=1) == (train, held)
    assert len(control.split_prompts(prompts, 6, 0, seed=1)[1]) == 4
    with pytest.raises(ValueError, match="none of the 10 prompts held out"):
        control.split_prompts(prompts, 10, 0, seed=1)


def test_input_files_are_validated(tmp_path):
    prompts = tmp_path / "prompts.yaml"
    prompts.write_text(yaml.safe_dump(["Hi.", ""]))
    with pytest.raises(DataError, match=r"record 1.*prompt"):
        load_prompts(prompts)
    qa = tmp_path / "qa.yaml"
    bad = json.loads(json.dumps(TARGETS))
    bad["targets"][0]["qa"][1]["answer"] = 3
    qa.write_text(yaml.safe_dump(bad))
    with pytest.raises(DataError, match=r"record 0.*qa\[1\]\.answer"):
        load_target(qa, "target-pirate")
    qa.write_text(yaml.safe_dump(TARGETS))
    with pytest.raises(DataError, match="no target labelled 'nope'"):
        load_target(qa, "nope")
    assert load_target(qa, "target-pirate")["description"].startswith("Talk like")


def test_qa_override_from_a_yaml_file_or_reading_output(tmp_path):
    qa = tmp_path / "qa.yaml"
    qa.write_text(yaml.safe_dump(TARGETS))
    other = json.loads(json.dumps(TARGETS))
    other["targets"][0]["qa"] = [{"question": "Who?", "answer": "Blackbeard."}]
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(other))
    target = control_target(qa, "target-pirate", str(tmp_path / "other.yaml"))
    assert target["qa"] == [{"question": "Who?", "answer": "Blackbeard."}]
    answers = tmp_path / "answers.jsonl"
    rows = [{"dialog": 0, "question": "Mood?", "answer": "Jolly.", "n_read_tokens": 9}, {}]
    answers.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(DataError, match=r"record 1.*question"):
        control_target(qa, "target-pirate", str(answers))
    answers.write_text(json.dumps(rows[0]) + "\n")
    target = control_target(qa, "target-pirate", str(answers))
    assert target["qa"] == [{"question": "Mood?", "answer": "Jolly."}]
    assert target["description"].startswith("Talk like") and target["qa_file"] == str(answers)
    assert control_target(qa, "target-pirate", None)["qa"] == TARGETS["targets"][0]["qa"]


def test_stage_writes_every_metric(tiny_model_dir, tokenizer, tmp_path):
    train_dir = decoder_artifact(tmp_path / "train", "llama", tokenizer)
    prompts = tmp_path / "prompts.yaml"
    prompts.write_text(yaml.safe_dump(PROMPTS))
    qa = tmp_path / "qa.yaml"
    qa.write_text(yaml.safe_dump(TARGETS))
    out = tmp_path / "store" / "control" / "abc"
    params = {
        "steps": 3,
        "n_prompts": 3,
        "n_eval_prompts": 2,
        "max_new_tokens": 6,
        "batch_size": 2,
        "device": "cpu",
    }
    control_main = control.stage.main
    control_main(
        "control",
        ControlParams,
        control.run,
        [
            "--out",
            str(out),
            "--key",
            "abc",
            "--params",
            json.dumps(params),
            "--input",
            f"model={tiny_model_dir}",
            "--input",
            f"train={train_dir}",
            "--input",
            f"prompts={prompts}",
            "--input",
            f"qa={qa}",
        ],
    )
    result = json.loads((out / "control.json").read_text())
    for mode in control.MODES:
        assert set(result["score"][mode]) >= {
            "answer_nll_per_token",
            "answer_loglik_mean",
            "answer_loglik_sd",
        }
        assert result["score"][mode]["n_items"] == 2 * 2
        assert (
            result["fluency"][mode]["perplexity"] is None
            or result["fluency"][mode]["perplexity"] > 1
        )
    assert result["train"]["steps"] == 3 and result["decoder"]["read_layer"] == READ_LAYER
    assert result["decoder"]["key"] == "k" * 16
    assert set(result["seconds"]) == {"mean_diff", "train", "compare"}
    for mode in ("steered", "mean_diff"):
        assert f"{mode}_minus_unsteered_loglik" in result
    vector = load_file(str(out / "mean_diff.safetensors"))["vector"]
    assert vector.shape == (64,) and float(vector.norm()) == pytest.approx(
        result["mean_diff"]["norm"], rel=1e-5
    )
    rows = [json.loads(line) for line in (out / "control_generations.jsonl").open()]
    assert len(rows) == 2 and all(set(control.MODES) <= set(row) for row in rows)
    assert "| steered |" in (out / "control.md").read_text()
    assert (out / "adapter" / STEER / "adapter_config.json").exists()
    manifest = store.read_manifest(out, verify="full")
    assert "loglik_steered" in manifest["info"]


@pytest.mark.slow
def test_steering_smollm2_raises_the_decoder_score(tmp_path):
    """SmolLM2 with a freshly initialised decoder adapter (the base model reads itself)."""
    from conftest import smollm2_gguf

    from pipeline.core.stages import REPO_DIR
    from pipeline.mechanism import prepare_model
    from pipeline.mechanism.modeling import load_model

    smollm2_gguf()
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    prepare_model.run(prepare_model.ModelSpec(), {}, model_dir, {})
    base, _ = load_model(model_dir)
    train_dir = tmp_path / "train"
    train_dir.mkdir()
    add_lora(base, r=4, alpha=8).save_pretrained(str(train_dir / "adapter"))
    store.write_manifest(train_dir, "f" * 16, "train", {"read_layer": 15}, {})
    out = tmp_path / "control"
    params = {"steps": 6, "n_eval_prompts": 4, "max_new_tokens": 16, "device": "cpu"}
    control.stage.main("control", ControlParams, control.run, [
        "--out", str(out), "--key", "c", "--params", json.dumps(params),
        "--input", f"model={model_dir}", "--input", f"train={train_dir}",
        "--input", f"prompts={REPO_DIR / 'data/steering/prompts.yaml'}",
        "--input", f"qa={REPO_DIR / 'data/steering/qa.yaml'}",
    ])  # fmt: skip
    result = json.loads((out / "control.json").read_text())
    assert result["steered_minus_unsteered_loglik"] > 3.0
    rows = [json.loads(line) for line in (out / "control_generations.jsonl").open()]
    assert any(row["steered"]["text"] != row["unsteered"]["text"] for row in rows)
