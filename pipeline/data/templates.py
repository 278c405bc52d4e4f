"""Stage `templates`: read dialogs built offline from the personas, goals and scenarios in data/.

Each authored control (a persona, goal or short scenario, ``data/templates/*.yaml``) is paired with
a few user stimuli (``stimuli.yaml``), and the target model answers each stimulus under the control
(greedy, batched). The model's own completion carries most of the readable signal about a masked
control (docs/design.md §6.2), which is why the target writes it rather than a fixed text.
"""

from __future__ import annotations

import logging
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from pipeline.core import stage
from pipeline.core.choices import Dtype
from pipeline.core.stage import bounded
from pipeline.data.schema import ControlKind, DataError, Family, write_dialogs

log = logging.getLogger("pipeline.data.templates")

REPO_DIR = Path(__file__).resolve().parents[2]
FAMILY_FILES = {"persona": "personas.yaml", "goal": "goals.yaml", "scenario": "scenarios.yaml"}
STIMULI_FILE = "stimuli.yaml"
FIRST_QUESTION = {
    "persona": "What persona is the assistant adopting?",
    "goal": "What goal is the assistant pursuing?",
}
ACKNOWLEDGEMENT = "Understood. I will keep that in mind from now on."
ENTRY_FIELDS = ("label", "name", "system", "qa")


@dataclass
class TemplateParams:
    """Settings of the offline template generator."""

    MIX_NAME: ClassVar[str] = "template"
    """What ``train.mix`` calls this stage's rows (their ``source`` up to any colon)."""

    seed: int = 0
    """Seed for choosing the stimuli of each label (and labels, when capped)."""
    families: list[Family] = field(default_factory=lambda: list(FAMILY_FILES))
    """Which control families to use: persona, goal, scenario."""
    labels_per_family: int | dict[str, int] | None = None
    """Cap on labels per family (one number, or per family); null keeps all."""
    stimuli_per_label: int = bounded(3, minimum=1)
    """User stimuli drawn (without replacement) for each label."""
    kind: ControlKind = "system"
    """Read dialog kind: system, stimulus_completion, stimulus (no completion) or control."""
    completion_tokens: int = bounded(24, minimum=0)
    """Tokens the target generates after the stimulus; 0 ends the dialog at the user turn."""
    batch_size: int = bounded(64, minimum=1)
    """Dialogs per generation batch."""
    templates_dir: str = "data/templates"
    """Folder of the template files; relative paths start at the repository root."""
    dtype: Dtype = "float32"
    """dtype the target model is loaded in for generation."""
    device: str = "cpu"
    """Device for generation (cpu, cuda, cuda:1, ...)."""

    def __post_init__(self):
        if not self.families:
            raise stage.ParamsError("templates: families must name at least one family")


@dataclass(frozen=True)
class Template:
    family: str
    label: str
    name: str
    system: str
    qa: tuple[tuple[str, str], ...]


def _read_yaml(path: Path) -> Any:
    if not path.is_file():
        raise DataError(path, None, "<file>", "does not exist")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise DataError(path, None, "<file>", f"not valid YAML: {exc}") from exc


def _text(value: Any, path: Path, index: int, name: str) -> str:
    if not isinstance(value, str):
        raise DataError(path, index, name, f"expected a string, got {type(value).__name__}")
    if not value.strip():
        raise DataError(path, index, name, "empty text")
    return value.strip()


def _qa(value: Any, path: Path, index: int) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, list) or not value:
        raise DataError(path, index, "qa", "expected a non-empty list of question/answer pairs")
    pairs = []
    for i, pair in enumerate(value):
        if not isinstance(pair, dict):
            raise DataError(path, index, f"qa[{i}]", "expected a mapping with question and answer")
        extra = sorted(set(pair) - {"question", "answer"})
        if extra:
            raise DataError(path, index, f"qa[{i}].{extra[0]}", "unknown key")
        question, answer = (
            _text(pair.get(key), path, index, f"qa[{i}].{key}") for key in ("question", "answer")
        )
        pairs.append((question, answer))
    return tuple(pairs)


def load_family(path: Path, family: str) -> list[Template]:
    """The entries of one template file, checked; errors name the file, entry index and field."""
    entries = _read_yaml(path)
    if not isinstance(entries, list) or not entries:
        raise DataError(path, None, "<file>", "expected a non-empty list of entries")
    slug = re.compile(rf"^{family}-[a-z0-9]+(-[a-z0-9]+)*$")
    templates = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise DataError(
                path, index, "<entry>", f"expected a mapping, got {type(entry).__name__}"
            )
        extra = sorted(set(entry) - set(ENTRY_FIELDS))
        if extra:
            raise DataError(path, index, extra[0], f"unknown field; expected {list(ENTRY_FIELDS)}")
        for name in ENTRY_FIELDS:
            if name not in entry:
                raise DataError(path, index, name, "missing")
        label = _text(entry["label"], path, index, "label")
        if not slug.match(label):
            raise DataError(path, index, "label", f"{label!r} is not a slug starting '{family}-'")
        qa = _qa(entry["qa"], path, index)
        expected = FIRST_QUESTION.get(family)
        if expected and qa[0][0] != expected:
            raise DataError(path, index, "qa[0].question", f"must be {expected!r}")
        name = _text(entry["name"], path, index, "name")
        system = _text(entry["system"], path, index, "system")
        templates.append(Template(family, label, name, system, qa))
    return templates


def load_templates(directory: Path, families: list[str]) -> list[Template]:
    """All templates of the chosen families, in file order; labels must be unique across files."""
    seen: dict[str, Path] = {}
    templates = []
    for family in families:
        path = Path(directory) / FAMILY_FILES[family]
        for index, template in enumerate(load_family(path, family)):
            if template.label in seen:
                raise DataError(
                    path,
                    index,
                    "label",
                    f"duplicate label {template.label!r} (first in {seen[template.label]})",
                )
            seen[template.label] = path
            templates.append(template)
    return templates


def load_stimuli(path: Path) -> list[str]:
    stimuli = _read_yaml(path)
    if not isinstance(stimuli, list) or not stimuli:
        raise DataError(path, None, "<file>", "expected a non-empty list of user questions")
    texts = [_text(value, path, index, "<stimulus>") for index, value in enumerate(stimuli)]
    for index, text in enumerate(texts):
        if text in texts[:index]:
            raise DataError(path, index, "<stimulus>", f"duplicate stimulus {text!r}")
    return texts


def cap_labels(templates: list[Template], caps: int | dict[str, int] | None, seed: int):
    """A seeded subset of labels per family, kept in file order."""
    if caps is None:
        return templates
    kept = []
    for family in dict.fromkeys(t.family for t in templates):
        members = [t for t in templates if t.family == family]
        cap = caps if isinstance(caps, int) else caps.get(family, len(members))
        # A string seed is hashed with sha512 by `random`, so this is stable across processes.
        chosen = sorted(
            random.Random(f"{seed}:{family}").sample(range(len(members)), min(cap, len(members)))
        )
        kept.extend(members[i] for i in chosen)
    return kept


def build_prompts(templates, stimuli, params: TemplateParams) -> list[dict[str, Any]]:
    """Rows without completions: label, kind, prompt messages, masked turn count and QA."""
    rng = random.Random(params.seed)
    rows = []
    for template in templates:
        qa = [{"question": q, "answer": a} for q, a in template.qa]
        if params.kind == "control":
            messages = [{"role": "user", "content": template.system}]
            rows.append(
                dict(
                    label=template.label, kind="control", messages=messages, n_masked_turns=0, qa=qa
                )
            )
            continue
        for stimulus in rng.sample(stimuli, min(params.stimuli_per_label, len(stimuli))):
            if params.kind == "system":
                messages = [{"role": "system", "content": template.system}]
                masked, kind = 1, "system"
            else:
                messages = [
                    {"role": "user", "content": template.system},
                    {"role": "assistant", "content": ACKNOWLEDGEMENT},
                ]
                masked = 2
                kind = "stimulus_completion" if _completes(params) else "stimulus"
            messages.append({"role": "user", "content": stimulus})
            rows.append(
                dict(
                    label=template.label, kind=kind, messages=messages, n_masked_turns=masked, qa=qa
                )
            )
    return rows


def _completes(params: TemplateParams) -> bool:
    return params.kind in ("system", "stimulus_completion") and params.completion_tokens > 0


def resolve_dir(path: str) -> Path:
    candidate = Path(path)
    if candidate.is_absolute() or candidate.exists():
        return candidate
    return REPO_DIR / candidate


def run(
    params: TemplateParams, inputs: dict[str, Path], workdir: Path, info: dict[str, Any]
) -> None:
    directory = inputs.get("templates") or resolve_dir(params.templates_dir)
    templates = cap_labels(
        load_templates(directory, params.families), params.labels_per_family, params.seed
    )
    stimuli = load_stimuli(Path(directory) / STIMULI_FILE)
    rows = build_prompts(templates, stimuli, params)
    dropped = 0
    if _completes(params):
        if "model" not in inputs:
            raise ValueError("templates: completions need the target model (--input model=DIR)")
        from pipeline.mechanism.completion import generate_completions
        from pipeline.mechanism.modeling import load_model

        model, tokenizer = load_model(inputs["model"], params.dtype, params.device)
        completions, stats = generate_completions(
            model,
            tokenizer,
            [r["messages"] for r in rows],
            params.completion_tokens,
            params.batch_size,
        )
        info.update(stats)
        kept = []
        for row, completion in zip(rows, completions, strict=True):
            if completion:
                row["messages"].append({"role": "assistant", "content": completion})
                kept.append(row)
        dropped, rows = len(rows) - len(kept), kept
    for row in rows:
        row.update(source=TemplateParams.MIX_NAME, split="train")
    written = write_dialogs(rows, workdir / "dialogs.parquet")
    families: dict[str, int] = {}
    for template in templates:
        families[template.family] = families.get(template.family, 0) + 1
    info.update(
        rows=len(written),
        labels=len({r["label"] for r in written}),
        labels_per_family=families,
        kind=params.kind,
        dropped_empty_completions=dropped,
    )
    log.info(
        "wrote %d %s dialogs for %d labels (%d dropped: empty completion)",
        len(written),
        params.kind,
        info["labels"],
        dropped,
    )


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    stage.main("templates", TemplateParams, run)
