"""decoder_8b_smoke: the 8B experiments' settings on a random Llama shrunk to fit a CPU.

The model keeps Llama-3-8B's architecture and layer ratios at 4 blocks of width 256 and is built
here from a config, so nothing is downloaded. decoder_8b (read block 2 of 4 for 15 of 32, write
block 0, LoRA on every projection, bf16 autocast in training) runs its whole graph through
Snakemake with DDP on 2 torchrun processes and with FSDP; decoder_8b_curriculum (the reading
curriculum, read blocks 1, 2, 3 for 8, 16, 24 of 32, written at the same depth) with DDP. What
changes for the real model: the model comes from the Hugging Face cache (``source: hub``), the
LatentQA data from data/latentqa/ and data/latentqa_eval/, the resources (8 GPUs, NCCL) from
config/config.yaml, and submission from the Slurm profile.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
import yaml
from conftest import REPO
from workspace import Workspace

pytestmark = pytest.mark.slow

BLOCKS, WIDTH = 4, 256
FULL_BLOCKS = 32


def smoke_model(folder, tokenizer) -> None:
    """Llama-3-8B's shape ratios (GQA 4:1, MLP 3.5x) at 4 blocks of width 256, random weights."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=WIDTH,
        intermediate_size=int(WIDTH * 3.5),
        num_hidden_layers=BLOCKS,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        rope_theta=500000.0,
        tie_word_embeddings=False,
    )
    model = AutoModelForCausalLM.from_config(config)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


LATENTQA = ("latentqa", "latentqa_eval")
"""Data sources whose files are not on a CI machine."""


def smoke_experiment(model_dir, parallel: str, name: str = "decoder_8b") -> dict:
    """An 8B experiment of config/config.yaml with the model, sizes and devices made CPU-sized."""
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    values = copy.deepcopy(config["experiments"][name])
    values["model"] = {"source": "local", "name": str(model_dir), "dtype": "float32"}
    templates = values["data"]["templates"]
    templates.update(
        device="cpu", dtype="float32", labels_per_family=3, stimuli_per_label=2, batch_size=8
    )
    templates["completion_tokens"] = 4
    values["data"] = {k: v for k, v in values["data"].items() if k not in LATENTQA}
    if "texts" in values:
        values["texts"] = {"device": "cpu", "dtype": "float32", "max_topics": 2}
        values["texts"].update(max_new_tokens=16, min_words=3, batch_size=8)
    if "public" in values["data"]:
        values["data"]["public"] = {"eval_texts": 2}
    train = values["train"]
    if train.get("mix"):
        train["mix"] = {k: v for k, v in train["mix"].items() if k != "latentqa-import"}
    train.update(
        read_layers=[round(layer * BLOCKS / FULL_BLOCKS) for layer in train["read_layers"]],
        # the 8B settings' few hundred validation items per family, made CPU-sized
        layer_choice_examples=2,
        max_steps=2,
        warmup_steps=1,
        per_device_batch_size=2,
        checkpoint_every=1,
        eval_every=1,
        eval_examples=4,
        device="cpu",
        parallel=parallel,
    )
    values["cache"] = {**values.get("cache", {}), "batch_size": 4}
    values["filter"] = {"eval_fraction": 0.3}
    values["evaluate"] = {
        "dtype": "float32",
        "max_loglik_items": 4,
        "max_recovery_items": 2,
        "max_relation_items": 4,
        "max_truth_items": 4,
        "max_task_items": 2,
        "max_new_tokens": 4,
        "bootstrap": 10,
    }
    values["control"] = None
    values["resources"] = {"train": {"nproc": 2, "threads": 1}}
    return values


@pytest.mark.parametrize(
    "name, parallel, read_layers, write_layer",
    [
        ("decoder_8b", "ddp", [2], 0),
        ("decoder_8b", "fsdp", [2], 0),
        ("decoder_8b_curriculum", "ddp", [1, 2, 3], None),
    ],
)
def test_the_8b_settings_run_end_to_end_on_a_shrunk_llama(
    name, parallel, read_layers, write_layer, tmp_path_factory, tokenizer
):
    model_dir = tmp_path_factory.mktemp("smoke_llama")
    smoke_model(model_dir, tokenizer)
    workspace = Workspace(tmp_path_factory.mktemp(f"smoke_{name}_{parallel}"), model_dir)
    workspace.config["experiments"] = {"tiny": smoke_experiment(model_dir, parallel, name)}
    workspace.write_config()
    workspace.snakemake(timeout=1500)
    view = workspace.view()
    train = json.loads((workspace.root / view["train"] / "_manifest.json").read_text())
    assert train["info"]["world_size"] == 2 and train["params"]["parallel"] == parallel
    assert train["params"]["read_layers"] == read_layers
    assert train["params"]["write_layer"] == write_layer
    assert train["params"]["dtype"] == "bfloat16"
    assert set(train["params"]["lora_targets"]) >= {"q_proj", "k_proj", "v_proj", "o_proj"}
    evaluation = json.loads((workspace.root / "results" / "tiny" / "eval.json").read_text())
    assert evaluation["layers"] == read_layers  # every metric at every read layer
    if len(read_layers) > 1:
        assert set(train["info"]["layer_choice"]) >= {"template", "public", "relation_qa"}
        assert {"heldout_tasks", "trained_tasks", "truth"} <= set(evaluation["metrics"])
    assert (workspace.root / "results" / "tiny" / "report").exists()
