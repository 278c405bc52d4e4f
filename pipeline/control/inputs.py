"""The control stage's inputs: prompts, control targets with their QA pairs (from the targets
YAML, another YAML file or the reading command's JSON lines), and the decoder's read settings.

Bad input raises :class:`~pipeline.data.schema.DataError` naming the file, the record and the field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from pipeline.core import store
from pipeline.data.schema import DataError
from pipeline.mechanism import layer_choice
from pipeline.mechanism.decoder_settings import DecoderSettings


def _yaml(path: Path):
    try:
        return yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as exc:
        raise DataError(path, None, "(file)", f"not valid YAML: {exc}") from exc


def _text(value: Any, path: Path, index: int | None, field: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DataError(path, index, field, "expected a non-empty string")
    return value.strip()


def load_prompts(path: Path) -> list[str]:
    """A YAML list of user prompts."""
    data = _yaml(path)
    if not isinstance(data, list) or not data:
        raise DataError(path, None, "(file)", "expected a non-empty YAML list of prompts")
    return [_text(p, path, i, "prompt") for i, p in enumerate(data)]


def load_target(path: Path, label: str) -> dict[str, Any]:
    """The control target ``label``: ``{label, description, qa: [{question, answer}]}``."""
    data = _yaml(path)
    if not isinstance(data, dict) or not isinstance(data.get("targets"), list):
        raise DataError(path, None, "targets", "expected a mapping with a list 'targets'")
    labels = []
    for i, item in enumerate(data["targets"]):
        if not isinstance(item, dict):
            raise DataError(path, i, "(record)", "expected a mapping")
        labels.append(_text(item.get("label"), path, i, "label"))
        if labels[-1] != label:
            continue
        qa = item.get("qa")
        if not isinstance(qa, list) or not qa:
            raise DataError(path, i, "qa", "expected a non-empty list of {question, answer}")
        pairs = []
        for j, pair in enumerate(qa):
            if not isinstance(pair, dict):
                raise DataError(path, i, f"qa[{j}]", "expected a mapping")
            pairs.append(
                {
                    "question": _text(pair.get("question"), path, i, f"qa[{j}].question"),
                    "answer": _text(pair.get("answer"), path, i, f"qa[{j}].answer"),
                }
            )
        return {
            "label": label,
            "description": _text(item.get("description"), path, i, "description"),
            "qa": pairs,
        }
    raise DataError(path, None, "targets", f"no target labelled {label!r}; have {labels}")


def load_qa_jsonl(path: Path) -> list[dict[str, str]]:
    """QA pairs from JSON lines with ``question`` and ``answer`` (the reading command's output)."""
    pairs = []
    for i, line in enumerate(Path(path).read_text().splitlines()):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(path, i, "(line)", f"not valid JSON: {exc}") from exc
        if not isinstance(row, dict):
            raise DataError(path, i, "(line)", "expected a JSON object")
        pairs.append(
            {
                "question": _text(row.get("question"), path, i, "question"),
                "answer": _text(row.get("answer"), path, i, "answer"),
            }
        )
    if not pairs:
        raise DataError(path, None, "(file)", "no QA pairs")
    return pairs


def control_target(qa_file: Path, label: str, override: str | None) -> dict[str, Any]:
    """The target ``label`` of ``qa_file``, its QA pairs replaced by ``override`` if given."""
    target = load_target(qa_file, label)
    source = Path(override) if override else Path(qa_file)
    if override and source.suffix == ".jsonl":
        target["qa"] = load_qa_jsonl(source)
    elif override:
        target = load_target(source, label)
    target["qa_file"], target["qa_sha256"] = str(source), store.file_sha256(source)
    return target


STEERING_FAMILIES = ("template",)
"""The steering questions ask about the assistant's persona: with several read layers, the
decoder reads at the layer its validation split chose for the persona dialogs."""


def decoder_settings(train_dir: Path) -> DecoderSettings:
    """How the decoder reads, from its train artifact (whose adapter must be there)."""
    manifest = store.read_manifest(train_dir, verify="fast")
    settings = DecoderSettings.from_manifest(manifest, where=f"{train_dir}/{store.MANIFEST}")
    if not (train_dir / "adapter" / "adapter_config.json").exists():
        raise FileNotFoundError(f"{train_dir}: no PEFT adapter in adapter/")
    if settings.all_layers:
        return settings
    choice = layer_choice.read(train_dir / "adapter", list(settings.read_layers))
    return settings.with_layer(choice.for_families(STEERING_FAMILIES)[0])


def decoder_provenance(train_dir: Path) -> dict[str, Any]:
    """Which decoder scored the control: its artifact key and its training summary."""
    manifest = store.read_manifest(train_dir, verify="none")
    return {"key": manifest.get("key"), "info": manifest.get("info", {})}
