"""Loading prepared models and finding their decoder blocks, for any Hugging Face causal LM."""

from __future__ import annotations

import importlib.util
import inspect
import os
from pathlib import Path

import torch
from torch import nn

from pipeline.core.errors import InputError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; expected one of {sorted(DTYPES)}") from None


def resolve_device(device: str | torch.device, local_rank: int = 0) -> torch.device:
    """The device a setting names: ``auto`` is CUDA where there is one, else the CPU; ``cuda`` is
    this process's GPU (``local_rank`` under torchrun)."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        return torch.device("cuda", local_rank)
    return torch.device(device)


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


def checked_from_pretrained(folder: Path, **kwargs):
    """``AutoModelForCausalLM.from_pretrained`` that fails on one line naming the folder.

    Truncated or mismatched safetensors and a broken config.json raise in transformers with
    messages that span many lines and do not name the folder; tensors missing from the weights
    would be initialised at random without an error.
    """
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    try:
        model, loading = AutoModelForCausalLM.from_pretrained(
            str(folder), output_loading_info=True, **kwargs
        )
    except RuntimeError as exc:
        if "ignore_mismatched_sizes" not in str(exc):
            raise InputError(f"{folder}: cannot load the model: {_reason(exc)}") from None
        # The message points at a logged report; loading again tolerantly says which tensor.
        _, loading = AutoModelForCausalLM.from_pretrained(
            str(folder), output_loading_info=True, ignore_mismatched_sizes=True, **kwargs
        )
        name, *shapes = min(loading.get("mismatched_keys") or [("?",)])
        raise InputError(
            f"{folder}: cannot load the model: size mismatch for {name}: the weights hold "
            f"{' but the config wants '.join(str(tuple(s)) for s in shapes)}"
        ) from None
    except (OSError, ValueError, KeyError, SafetensorError) as exc:
        raise InputError(f"{folder}: cannot load the model: {_reason(exc)}") from None
    missing = loading.get("missing_keys") or []
    if missing:
        raise InputError(
            f"{folder}: the weights lack {len(missing)} of the model's tensors (e.g. {missing[0]})"
        )
    return model


def _reason(exc: BaseException) -> str:
    """The gist of a loader's exception: its first lines that say something, on one line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    useful = [line for line in lines if "mismatch" in line] or lines
    return f"{type(exc).__name__}: " + " ".join(" ".join(useful[:3]).split())[:400]


def load_model(
    path: str | os.PathLike,
    dtype: str = "float32",
    device: str | torch.device = "cpu",
):
    """Load a prepared model folder (safetensors) and its tokenizer, with no network access, on
    ``device`` (``auto``: :func:`resolve_device`)."""
    device = resolve_device(device)
    path = Path(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path} is not a prepared model folder (no config.json)")
    model = checked_from_pretrained(
        path,
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


def cache_argument(model: nn.Module) -> str:
    """The name under which this model's forward takes a KV cache.

    transformers renamed ``past_key_values`` to ``cache`` (the old name warns from 5.2x and goes
    in 5.40); the GPU machines still run 5.17, which knows only the old one.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    parameters = inspect.signature(type(base).forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"
