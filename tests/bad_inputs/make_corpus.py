"""Writes the bad-input corpus beside this file (run once; the files are committed).

    python tests/bad_inputs/make_corpus.py

Each case is listed in ``cases.yaml`` with the consumer that reads it and the words its one-line
error must contain; ``tests/test_bad_inputs.py`` feeds every case to its consumer.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import torch
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent

DIALOG = {"messages": [{"role": "user", "content": "I spent the weekend sailing."}]}
RECORD = {
    "label": "sailor",
    "kind": "control",
    "messages": [{"role": "user", "content": "You are a sailor. Describe your morning."}],
    "n_masked_turns": 0,
    "qa": [{"question": "Who is the assistant?", "answer": "A sailor."}],
    "source": "test",
    "split": "train",
}
QA = {"persona-sailor": [["Who is the assistant?", "A sailor."], ["Is it at sea?", "Yes."]]}
CONTROL = [{"control_user": "Be a sailor for this chat.", "label": "persona-sailor"}]


def text(rel: str, content: str | bytes) -> None:
    path = HERE / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")


def as_json(value) -> str:
    return json.dumps(value, indent=1) + "\n"


def read_cases() -> None:
    good = json.dumps(DIALOG)
    text("read/dialogs_broken_line.jsonl", f'{good}\n{{"messages": [{{"role": "user"\n{good}\n')
    latin1 = '{"messages": [{"role": "user", "content": "caf\xe9"}]}\n'.encode("latin-1")
    text("read/dialogs_not_utf8.jsonl", latin1)
    text("read/dialogs_empty_list.json", "[]\n")
    text("read/dialogs_empty_file.jsonl", "")
    text("read/dialogs_empty_messages.jsonl", '{"messages": []}\n')
    narrator = [{"role": "narrator", "content": "Once upon a time."}]
    text("read/dialogs_bad_role.json", as_json(narrator))
    text("read/dialogs_content_not_string.json", as_json([{"role": "user", "content": 42}]))
    masked = {"messages": DIALOG["messages"], "n_masked_turns": 1}
    text("read/dialogs_masked_everything.json", as_json(masked))
    text("read/dialogs_unknown_field.json", as_json({**DIALOG, "speaker": "me"}))
    words = " ".join(f"word{i % 97}" for i in range(3000))
    text("read/dialogs_too_long.json", as_json([{"role": "user", "content": words}]))
    text("read/questions_not_a_list.json", as_json({"question": "What persona?"}))
    text("read/questions_empty.txt", "\n\n")
    text("read/questions_not_utf8.txt", "Qu\xe9 persona?\n".encode("latin-1"))
    text("read/questions_invalid.json", '["What persona?", \n')
    text("read/args_read_layer_99.txt", "--read-layer 99\n")
    text("read/args_write_layer_99.txt", "--write-layer 99\n")
    text("read/args_positions_bogus.txt", "--positions bogus\n")


def latentqa_cases() -> None:
    def folder(name: str, files: dict[str, str | bytes]) -> None:
        shutil.rmtree(HERE / "latentqa" / name, ignore_errors=True)
        for file, content in files.items():
            text(f"latentqa/{name}/{file}", content)

    stim = {"control_user": "Be a sailor.", "control_model": "Aye.", "label": "persona-sailor"}
    folder("missing_field", {"qa.json": as_json(QA), "stimulus.json": as_json([stim])})
    folder("qa_not_object", {"qa.json": as_json([QA]), "control.json": as_json(CONTROL)})
    folder(
        "not_utf8",
        {
            "qa.json": as_json(QA),
            "control.json": as_json(CONTROL).replace("sailor", "caf\xe9").encode("latin-1"),
        },
    )
    folder("invalid_json", {"qa.json": as_json(QA), "control.json": as_json(CONTROL)[:-8]})
    other = [{"control_user": "Be a pilot.", "label": "persona-pilot"}]
    folder("unknown_label", {"qa.json": as_json(QA), "control.json": as_json(other)})
    empty = [{"control_user": "   ", "label": "persona-sailor"}]
    folder("empty_text", {"qa.json": as_json(QA), "control.json": as_json(empty)})
    bad_qa = {"persona-sailor": [["Who is the assistant?", "A sailor.", "extra"]]}
    folder("qa_pair_wrong_arity", {"qa.json": as_json(bad_qa), "control.json": as_json(CONTROL)})
    folder("missing_file", {"qa.json": as_json(QA)})
    # Training data holding a row of the evaluation split (authored rows, both sides).
    pilot = {"control_user": "Be a pilot for this chat.", "label": "persona-pilot"}
    qa = {**QA, "persona-pilot": [["Who is the assistant?", "A pilot."]]}
    folder("leak/train", {"qa.json": as_json(qa), "control.json": as_json([pilot, *CONTROL])})
    folder("leak/eval", {"qa.json": as_json(QA), "control.json": as_json(CONTROL)})


def dialogs_cases() -> None:
    from pipeline.data.schema import POLARS_SCHEMA, write_dialogs

    folder = HERE / "dialogs"
    folder.mkdir(exist_ok=True)
    good = folder / ".good.parquet"
    write_dialogs([RECORD], good)
    data = good.read_bytes()
    good.unlink()
    text("dialogs/truncated.parquet", data[: len(data) // 2])
    text("dialogs/not_parquet.parquet", "id,label,kind\nx,sailor,control\n")
    row = {**RECORD, "id": None}
    frame = pl.DataFrame([row], schema=POLARS_SCHEMA)
    frame.with_columns(pl.col("n_masked_turns").cast(pl.String)).write_parquet(
        folder / "masked_turns_as_text.parquet"
    )
    frame.drop("qa").write_parquet(folder / "missing_qa_column.parquet")
    frame.clear().write_parquet(folder / "no_rows.parquet")
    frame.with_columns(pl.Series("messages", [["You are a sailor."]])).write_parquet(
        folder / "messages_as_strings.parquet"
    )


def model_cases() -> None:
    weights = {"model.embed_tokens.weight": torch.zeros(16, 64)}
    folder = HERE / "model"
    (folder / "truncated_header").mkdir(parents=True, exist_ok=True)
    (folder / "truncated_data").mkdir(parents=True, exist_ok=True)
    full = folder / ".full.safetensors"
    save_file(weights, str(full))
    data = full.read_bytes()
    full.unlink()
    header = 8 + int.from_bytes(data[:8], "little")
    text("model/truncated_header/model.safetensors", data[: header // 2])
    text("model/truncated_data/model.safetensors", data[: header + 100])
    text("model/config_not_json/config.json", '{"architectures": ["LlamaForCausalLM"], \n')
    import sys

    sys.path.insert(0, str(HERE.parent))
    from conftest import tiny_config

    # The tiny test model's config (SmolLM2's vocabulary) with a hidden size its weights lack.
    config = tiny_config("llama", 49152, hidden_size=32)
    config.architectures = ["LlamaForCausalLM"]
    text("model/wrong_hidden_size/config.json", config.to_json_string())


def params_cases() -> None:
    text("params/unknown_key.json", as_json({"source": "local", "nmae": "/models/x"}))
    text("params/wrong_type.json", as_json({"source": "local", "dtype": 32}))
    text("params/not_json.txt", "source: local\n")


TINY = """\
store: results/store
logs: results/logs
default_experiments: [tiny]
experiments:
  tiny:
    model: {{source: local, name: "{{tiny_model}}"}}
    data:
{data}
    filter: {{eval_fraction: 0.3}}
    train: {train}
    evaluate: {{}}
    control: null
    report: {{}}
"""
TEMPLATES = "      templates: {labels_per_family: 2, stimuli_per_label: 1, completion_tokens: 0}"


def config_cases() -> None:
    def config(name: str, train: str = "{read_layers: [1]}", data: str = TEMPLATES) -> None:
        text(f"config/{name}.yaml", TINY.format(train=train, data=data))

    config("unknown_key", train="{read_layers: [1], learning_rate: 0.001}")
    config("wrong_type", train="{read_layers: [1], max_steps: many}")
    config("read_layer_99", train="{read_layers: [99]}")
    config("cache_layer_beyond", train="{read_layers: [1], write_layer: 4}")
    config("latentqa_missing", data="      latentqa: {path: data/latentqa/absent}")
    leak = (
        f"{TEMPLATES}\n"
        "      latentqa: {path: '{corpus}/latentqa/leak/train', kinds: [control]}\n"
        "      latentqa_eval: {path: '{corpus}/latentqa/leak/eval', kinds: [control]}"
    )
    config("latentqa_leak", data=leak)


def curate_cases() -> None:
    response = {
        "content": "Sure! Here is a persona: a retired sailor who loves the sea.",
        "finish_reason": "stop",
        "prompt_tokens": 120,
        "completion_tokens": 14,
    }
    text("curate/response_not_json.json", as_json({"response": response}))


if __name__ == "__main__":
    read_cases()
    latentqa_cases()
    dialogs_cases()
    model_cases()
    params_cases()
    config_cases()
    curate_cases()
