"""Loading prepared models and finding their decoder blocks, for any Hugging Face causal LM."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
from torch import nn

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; expected one of {sorted(DTYPES)}") from None


def attention_implementation(device: str | torch.device) -> str:
    """flash-attn 2 on CUDA when the optional extra is installed, PyTorch SDPA otherwise."""
    on_cuda = torch.device(device).type == "cuda"
    if on_cuda and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def load_tokenizer(path: str | os.PathLike):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    path: str | os.PathLike,
    dtype: str = "float32",
    device: str | torch.device = "cpu",
):
    """Load a prepared model folder (safetensors) and its tokenizer, with no network access."""
    from transformers import AutoModelForCausalLM

    path = Path(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path} is not a prepared model folder (no config.json)")
    model = AutoModelForCausalLM.from_pretrained(
        str(path),
        dtype=torch_dtype(dtype),
        attn_implementation=attention_implementation(device),
        local_files_only=True,
    )
    model.to(device)
    return model, load_tokenizer(path)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The list of decoder blocks, found generically (through PEFT and DDP/FSDP wrappers).

    It is the longest ``nn.ModuleList`` whose modules all share one class, which is the block
    stack in every causal LM of the Llama, Qwen, Mistral, Gemma and GPT families.
    """
    best: nn.ModuleList | None = None
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            if len({type(block) for block in module}) == 1 and (
                best is None or len(module) > len(best)
            ):
                best = module
    if best is None:
        raise ValueError(f"no list of decoder blocks found in {type(model).__name__}")
    return best
