"""Finding a trained decoder and loading it onto the base model it was trained on.

An experiment's view names its train artifact and prepared model; before the adapter is loaded,
its manifest, its PEFT config and the shapes of its weights are checked against the model given,
so a decoder is never silently run on another base model.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pipeline.core import store

KEY_RE = re.compile(r"^[0-9a-f]{16}$")


class BaseModelMismatch(ValueError):
    """The adapter was trained on another base model than the one given."""


def read_manifest_or_none(path: Path) -> dict[str, Any] | None:
    """The store manifest of an artifact folder, or None where there is none (a bare adapter)."""
    try:
        return json.loads((path / store.MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def _resolve(path: str, results: Path) -> Path:
    for candidate in (Path(path), results.parent / path):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"{path} (named by the view in {results}) does not exist")


def experiment_paths(experiment: str, results: Path = Path("results")) -> tuple[Path, Path]:
    """(train artifact, prepared model) of an experiment, from ``results/<name>/view.json``."""
    view = results / experiment / "view.json"
    try:
        artifacts = json.loads(view.read_text())
    except OSError:
        raise FileNotFoundError(
            f"no view {view}: run the experiment first (snakemake --cores all results/{experiment})"
        ) from None
    missing = [name for name in ("train", "prepare_model") if name not in artifacts]
    if missing:
        raise FileNotFoundError(f"{view} names no {missing} artifact")
    return _resolve(artifacts["train"], results), _resolve(artifacts["prepare_model"], results)


def _adapter_shapes(adapter_dir: Path) -> tuple[int | None, int | None]:
    """(input size of the q_proj LoRA, number of blocks) that the adapter's weights imply."""
    from safetensors import safe_open

    file = adapter_dir / "adapter_model.safetensors"
    if not file.exists():
        return None, None
    hidden, layers = None, None
    with safe_open(str(file), "pt") as handle:
        for name in handle.keys():
            match = re.search(r"\.layers\.(\d+)\.", name)
            if match:
                layers = max(layers or 0, int(match.group(1)) + 1)
            if name.endswith("q_proj.lora_A.weight"):
                hidden = handle.get_slice(name).get_shape()[1]
    return hidden, layers


def check_base_model(
    adapter_dir: Path, model_dir: Path, train_manifest: dict[str, Any] | None = None
) -> None:
    """Raise BaseModelMismatch when the adapter was trained on another model than ``model_dir``."""
    model_key = (read_manifest_or_none(model_dir) or {}).get("key")
    trained_on = (train_manifest or {}).get("inputs", {}).get("model")
    if model_key and trained_on and trained_on != model_key:
        raise BaseModelMismatch(
            f"the adapter in {adapter_dir} was trained on the prepared model with key "
            f"{trained_on}, but {model_dir} is the prepared model {model_key}; pass the model "
            f"it was trained on (results/store/prepare_model/{trained_on})"
        )
    try:
        base = json.loads((adapter_dir / "adapter_config.json").read_text())
        base = str(base.get("base_model_name_or_path") or "")
    except (OSError, ValueError):
        raise FileNotFoundError(
            f"{adapter_dir} is not a PEFT adapter (no readable adapter_config.json)"
        ) from None
    base_key = Path(base).name
    if model_key and KEY_RE.match(base_key) and base_key != model_key:
        raise BaseModelMismatch(
            f"the adapter in {adapter_dir} was trained on {base} (key {base_key}), but "
            f"{model_dir} is the prepared model {model_key}"
        )
    config = json.loads((model_dir / "config.json").read_text())
    hidden, layers = _adapter_shapes(adapter_dir)
    size, depth = config.get("hidden_size"), config.get("num_hidden_layers")
    if (hidden and size and hidden != size) or (layers and depth and layers > depth):
        raise BaseModelMismatch(
            f"the adapter in {adapter_dir} was trained on a base model with hidden size {hidden} "
            f"and at least {layers} blocks (base {base or 'unknown'}), but {model_dir} has hidden "
            f"size {size} and {depth} blocks"
        )


def load_decoder(
    model_dir: Path,
    adapter_dir: Path,
    train_manifest: dict[str, Any] | None,
    dtype: str = "float32",
    device: str = "auto",
):
    """(PEFT model in eval mode, tokenizer): the one base model, with the adapter loaded."""
    from peft import PeftModel

    from pipeline.mechanism.modeling import load_model, resolve_device

    check_base_model(adapter_dir, model_dir, train_manifest)
    device = resolve_device(device)
    base, tokenizer = load_model(model_dir, dtype, device)
    try:
        model = PeftModel.from_pretrained(base, str(adapter_dir))
    except RuntimeError as exc:
        if "size mismatch" in str(exc):
            raise BaseModelMismatch(
                f"the adapter in {adapter_dir} does not fit {model_dir}: {str(exc)[:300]}"
            ) from exc
        raise
    return model.to(device).eval(), tokenizer
