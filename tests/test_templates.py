"""The offline template generator and the small inputs the project authors in data/."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from pipeline.core import stage
from pipeline.data.schema import DataError, read_dialogs
from pipeline.data.templates import (
    ACKNOWLEDGEMENT,
    FAMILY_FILES,
    TemplateParams,
    build_prompts,
    cap_labels,
    load_stimuli,
    load_templates,
    run,
)
from pipeline.mechanism.completion import generate_completions

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data"
TEMPLATES = DATA / "templates"
MINIMUM = {"persona": 120, "goal": 60, "scenario": 40}
STOPWORDS = {"a", "an", "the", "their", "to", "in", "on", "at", "by", "it", "of"}


def _words(text: str) -> list[str]:
    return [w.removesuffix("'s") for w in re.findall(r"[a-z0-9'-]+", text.lower())]


# --- authored files -----------------------------------------------------------------------------


def test_authored_templates_are_many_distinct_and_short():
    templates = load_templates(TEMPLATES, list(FAMILY_FILES))
    labels = [t.label for t in templates]
    assert len(labels) == len(set(labels)) >= 220
    for family, minimum in MINIMUM.items():
        members = [t for t in templates if t.family == family]
        assert len(members) >= minimum, family
        assert len({t.name.lower() for t in members}) == len(members), f"{family} names repeat"
    for t in templates:
        assert 2 <= len(t.qa) <= 3, t.label
        for _question, answer in t.qa:
            assert len(answer.split()) <= 12, (t.label, answer)
        assert len(re.findall(r"[.!?](\s|$)", t.system)) <= 2, t.label


def test_first_question_names_the_control():
    for t in load_templates(TEMPLATES, list(FAMILY_FILES)):
        question, answer = t.qa[0]
        if t.family == "persona":
            article = "An" if t.name[0].lower() in "aeiou" else "A"
            assert (question, answer) == (
                "What persona is the assistant adopting?",
                f"{article} {t.name}.",
            )
        elif t.family == "goal":
            assert question == "What goal is the assistant pursuing?"
            assert answer.endswith(".") and len(answer.split()) <= 12
        else:
            # Extractive: every content word of every answer is stated in the scenario itself.
            stated = set(_words(t.system))
            for _question, answer in t.qa:
                missing = [w for w in _words(answer) if w not in STOPWORDS and w not in stated]
                assert not missing, (t.label, answer, missing)


def test_authored_stimuli():
    stimuli = load_stimuli(TEMPLATES / "stimuli.yaml")
    assert len(stimuli) >= 60
    assert len(set(stimuli)) == len(stimuli)
    assert all(len(s.split()) <= 20 for s in stimuli)


def test_steering_prompts_and_targets():
    prompts = yaml.safe_load((DATA / "steering" / "prompts.yaml").read_text())
    assert len(prompts) >= 30 and len(set(prompts)) == len(prompts)
    assert all(isinstance(p, str) and p.strip() for p in prompts)
    targets = yaml.safe_load((DATA / "steering" / "qa.yaml").read_text())["targets"]
    assert 2 <= len(targets) <= 3
    for target in targets:
        assert target["label"] and target["description"]
        assert 3 <= len(target["qa"]) <= 5
        assert all(p["question"].strip() and p["answer"].strip() for p in target["qa"])


# --- malformed template files -------------------------------------------------------------------


def _small_copy(tmp_path: Path, per_family: int = 2) -> Path:
    """A template folder holding the first few entries of each authored file."""
    folder = tmp_path / "templates"
    folder.mkdir()
    for name in FAMILY_FILES.values():
        entries = yaml.safe_load((TEMPLATES / name).read_text())[:per_family]
        (folder / name).write_text(yaml.safe_dump(entries, sort_keys=False))
    shutil.copy(TEMPLATES / "stimuli.yaml", folder / "stimuli.yaml")
    return folder


def _edit(folder: Path, file: str, change) -> None:
    entries = yaml.safe_load((folder / file).read_text())
    change(entries)
    (folder / file).write_text(yaml.safe_dump(entries, sort_keys=False))


MALFORMED = {
    "missing field": ("goals.yaml", lambda e: e[1].pop("system"), 1, "system"),
    "empty text": ("personas.yaml", lambda e: e[0].update(name="  "), 0, "name"),
    "empty answer": (
        "scenarios.yaml",
        lambda e: e[1]["qa"][1].update(answer=""),
        1,
        "qa[1].answer",
    ),
    "duplicate label": ("personas.yaml", lambda e: e[1].update(label=e[0]["label"]), 1, "label"),
    "label of another family": ("goals.yaml", lambda e: e[0].update(label="persona-x"), 0, "label"),
    "wrong first question": (
        "personas.yaml",
        lambda e: e[1]["qa"][0].update(question="Who?"),
        1,
        "qa[0].question",
    ),
    "qa not a list": ("scenarios.yaml", lambda e: e[0].update(qa="Where? Here."), 0, "qa"),
    "unknown field": ("goals.yaml", lambda e: e[0].update(colour="red"), 0, "colour"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_templates_name_file_index_and_field(tmp_path, case):
    file, change, index, field = MALFORMED[case]
    folder = _small_copy(tmp_path)
    _edit(folder, file, change)
    with pytest.raises(DataError) as caught:
        load_templates(folder, list(FAMILY_FILES))
    error = caught.value
    assert Path(error.file).name == file
    assert (error.record, error.field) == (index, field)
    assert file in str(error) and f"record {index}" in str(error) and field in str(error)


def test_malformed_stimuli_and_yaml(tmp_path):
    folder = _small_copy(tmp_path)
    (folder / "stimuli.yaml").write_text("- Hello?\n- ''\n")
    with pytest.raises(DataError, match=r"stimuli.yaml: record 1"):
        load_stimuli(folder / "stimuli.yaml")
    (folder / "goals.yaml").write_text("- label: [unclosed\n")
    with pytest.raises(DataError, match=r"goals.yaml.*not valid YAML"):
        load_templates(folder, ["goal"])


# --- dialogs ------------------------------------------------------------------------------------


def _run(tmp_path: Path, name: str, inputs: dict, **values) -> list[dict]:
    workdir = tmp_path / name
    workdir.mkdir()
    info: dict = {}
    run(TemplateParams(**values), inputs, workdir, info)
    rows = read_dialogs(workdir / "dialogs.parquet")
    assert info["rows"] == len(rows)
    return rows


def test_prompts_are_deterministic_for_a_seed():
    templates = cap_labels(load_templates(TEMPLATES, list(FAMILY_FILES)), 5, seed=3)
    assert len(templates) == 15
    stimuli = load_stimuli(TEMPLATES / "stimuli.yaml")
    params = TemplateParams(seed=3, stimuli_per_label=3)
    first = build_prompts(templates, stimuli, params)
    assert first == build_prompts(templates, stimuli, params)
    assert len(first) == 45
    for label in {r["label"] for r in first}:
        users = [r["messages"][-1]["content"] for r in first if r["label"] == label]
        assert len(set(users)) == 3  # drawn without replacement
    other = build_prompts(templates, stimuli, TemplateParams(seed=4, stimuli_per_label=3))
    assert [r["messages"] for r in other] != [r["messages"] for r in first]
    goals = load_templates(TEMPLATES, ["goal"])
    capped = cap_labels(goals, {"goal": 7}, seed=3)
    assert len(capped) == 7 and capped == cap_labels(goals, {"goal": 7}, seed=3)
    assert capped == [t for t in goals if t in capped]  # file order kept


def test_generation_is_deterministic_and_schema_valid(tmp_path, talking_model_dir):
    values = dict(
        seed=5, labels_per_family=2, stimuli_per_label=2, completion_tokens=3, batch_size=4
    )
    first = _run(tmp_path, "a", {"model": talking_model_dir}, **values)
    second = _run(tmp_path, "b", {"model": talking_model_dir}, **values)
    assert first == second
    assert len(first) == 12
    assert {r["source"] for r in first} == {"template"}
    assert {r["split"] for r in first} == {"train"}
    assert len({r["label"] for r in first}) == 6
    for row in first:
        assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant"]
        assert row["n_masked_turns"] == 1
        assert row["messages"][-1]["content"] == row["messages"][-1]["content"].strip() != ""


def test_batched_completions_match_one_by_one(talking_model_dir):
    """Left padding must not change what the model says: batched equals unbatched."""
    from pipeline.mechanism.modeling import load_model

    model, tokenizer = load_model(talking_model_dir)
    conversations = [
        [{"role": "system", "content": "You are a potter."}, {"role": "user", "content": "Hi?"}],
        [
            {"role": "system", "content": "You are a very old and tired lighthouse keeper."},
            {"role": "user", "content": "What should I cook for dinner tonight, in your view?"},
        ],
        [{"role": "user", "content": "Talk about bees."}],
    ]
    batched, stats = generate_completions(model, tokenizer, conversations, 4, batch_size=3)
    alone = [
        generate_completions(model, tokenizer, [c], 4, batch_size=1)[0][0] for c in conversations
    ]
    assert batched == alone
    assert all(batched) and len(set(batched)) > 1
    assert 0 < stats["generated_tokens"] <= 12
    assert tokenizer.padding_side == "left"


def test_empty_completions_are_dropped_and_counted(tmp_path, tiny_model_dir):
    # The tied tiny model only ever emits newlines, which strip to nothing.
    workdir = tmp_path / "out"
    workdir.mkdir()
    info: dict = {}
    params = TemplateParams(labels_per_family=1, stimuli_per_label=1, completion_tokens=2)
    run(params, {"model": tiny_model_dir}, workdir, info)
    assert info["dropped_empty_completions"] == 3 and info["rows"] == 0


@pytest.mark.parametrize(
    ("kind", "tokens", "roles", "masked", "row_kind"),
    [
        ("system", 2, ["system", "user", "assistant"], 1, "system"),
        ("system", 0, ["system", "user"], 1, "system"),
        (
            "stimulus_completion",
            2,
            ["user", "assistant", "user", "assistant"],
            2,
            "stimulus_completion",
        ),
        ("stimulus_completion", 0, ["user", "assistant", "user"], 2, "stimulus"),
        ("stimulus", 2, ["user", "assistant", "user"], 2, "stimulus"),
        ("control", 2, ["user"], 0, "control"),
    ],
)
def test_masking_per_kind(tmp_path, talking_model_dir, kind, tokens, roles, masked, row_kind):
    folder = _small_copy(tmp_path, per_family=1)
    # No model is passed when nothing is generated: those kinds must not need one.
    inputs = {"templates": folder}
    if tokens and kind in ("system", "stimulus_completion"):
        inputs["model"] = talking_model_dir
    rows = _run(tmp_path, "out", inputs, kind=kind, completion_tokens=tokens, stimuli_per_label=2)
    assert len(rows) == (3 if kind == "control" else 6)
    controls = {t.label: t for t in load_templates(folder, list(FAMILY_FILES))}
    for row in rows:
        assert [m["role"] for m in row["messages"]] == roles
        assert (row["n_masked_turns"], row["kind"]) == (masked, row_kind)
        control = controls[row["label"]]
        assert row["messages"][0]["content"] == control.system
        assert [(p["question"], p["answer"]) for p in row["qa"]] == list(control.qa)
        if row_kind == "stimulus_completion":
            assert row["messages"][1]["content"] == ACKNOWLEDGEMENT


def test_completions_need_a_model(tmp_path):
    with pytest.raises(ValueError, match="--input model"):
        _run(tmp_path, "out", {"templates": _small_copy(tmp_path)}, completion_tokens=2)


def test_bad_params_are_refused():
    for values, message in (
        ({"kind": "chat"}, r"params\.kind: 'chat' is not one of 'control', 'stimulus'"),
        ({"families": ["robot"]}, r"params\.families\[0\]: 'robot' is not one of 'persona'"),
        ({"families": []}, "templates: families must name at least one family"),
        ({"batch_size": 0}, r"params\.batch_size: 0 is out of range: must be >= 1"),
        ({"completion_tokens": -1}, r"params\.completion_tokens: -1 is out of range: must be >= 0"),
    ):
        with pytest.raises(stage.ParamsError, match=message):
            stage.build_params(TemplateParams, values, "templates params")


def test_stage_cli_publishes_dialogs_and_counts(tmp_path, talking_model_dir):
    out = tmp_path / "store" / "templates" / "k1"
    params = {
        "labels_per_family": {"persona": 2, "goal": 1, "scenario": 1},
        "stimuli_per_label": 1,
        "completion_tokens": 2,
        "kind": "stimulus_completion",
    }
    stage.main(
        "templates",
        TemplateParams,
        run,
        [
            "--out",
            str(out),
            "--key",
            "k1",
            "--params",
            json.dumps(params),
            "--input",
            f"model={talking_model_dir}",
        ],
    )
    info = json.loads((out / "_manifest.json").read_text())["info"]
    assert info["labels_per_family"] == {"persona": 2, "goal": 1, "scenario": 1}
    assert (info["rows"], info["dropped_empty_completions"]) == (4, 0)
    assert info["generated_tokens"] > 0 and info["tokens_per_second"] > 0
    rows = read_dialogs(out / "dialogs.parquet")
    assert [r["kind"] for r in rows] == ["stimulus_completion"] * 4
