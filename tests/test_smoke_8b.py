"""decoder_8b_smoke: the decoder_8b experiment's settings on a random Llama shrunk to fit a CPU.

The model keeps Llama-3-8B's architecture and layer ratios at 4 blocks of width 256 (read block 2 of
4 for 15 of 32, write block 0, LoRA on every projection, bf16 autocast in training) and is built
here from a config, so nothing is downloaded. The whole graph runs twice through Snakemake, with
DDP on 2 torchrun processes and with FSDP. What changes for the real model: the model comes from
the Hugging Face cache (``source: hub``), the LatentQA training data from data/latentqa/, the
resources (8 GPUs, NCCL) from config/config.yaml, and submission from the Slurm profile.
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


def smoke_experiment(model_dir, parallel: str) -> dict:
    """decoder_8b from config/config.yaml with the model, sizes and devices made CPU-sized."""
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    values = copy.deepcopy(config["experiments"]["decoder_8b"])
    values["model"] = {"source": "local", "name": str(model_dir), "dtype": "float32"}
    templates = values["data"]["templates"]
    templates.update(
        device="cpu", dtype="float32", labels_per_family=3, stimuli_per_label=2, batch_size=8
    )
    templates["completion_tokens"] = 4
    values["data"] = {"templates": templates}  # the LatentQA files are not on a CI machine
    train = values["train"]
    assert (train["read_layers"], train["write_layer"]) == ([15], 0)
    train.update(
        read_layers=[round(layer * BLOCKS / FULL_BLOCKS) for layer in train["read_layers"]],
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
        "max_new_tokens": 4,
        "bootstrap": 10,
    }
    values["control"] = None
    values["resources"] = {"train": {"nproc": 2, "threads": 1}}
    return values


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_decoder_8b_settings_run_end_to_end_on_a_shrunk_llama(
    parallel, tmp_path_factory, tokenizer
):
    model_dir = tmp_path_factory.mktemp("smoke_llama")
    smoke_model(model_dir, tokenizer)
    workspace = Workspace(tmp_path_factory.mktemp(f"smoke_{parallel}"), model_dir)
    workspace.config["experiments"] = {"tiny": smoke_experiment(model_dir, parallel)}
    workspace.write_config()
    workspace.snakemake(timeout=1500)
    view = workspace.view()
    train = json.loads((workspace.root / view["train"] / "_manifest.json").read_text())
    assert train["info"]["world_size"] == 2 and train["params"]["parallel"] == parallel
    assert train["params"]["read_layers"] == [2] and train["params"]["write_layer"] == 0
    assert train["params"]["dtype"] == "bfloat16"
    assert set(train["params"]["lora_targets"]) >= {"q_proj", "k_proj", "v_proj", "o_proj"}
    evaluation = json.loads((workspace.root / "results" / "tiny" / "eval.json").read_text())
    assert evaluation  # the evaluation ran on the trained adapter
    assert (workspace.root / "results" / "tiny" / "report").exists()
