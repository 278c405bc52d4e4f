"""The reading command: decoder lookup, inputs, JSONL answers, and the base-model check."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import tiny_config

from pipeline import read
from pipeline.core import store
from pipeline.data.schema import DataError
from pipeline.mechanism.decoder_files import BaseModelMismatch, check_base_model
from pipeline.read import load_dialogs, load_questions

MODEL_KEY = "aaaaaaaaaaaaaaaa"


def _train_artifact(
    root: Path, model_dir: Path, model_key: str, layers=(2,), choice=None, name="train"
) -> Path:
    from pipeline.mechanism.lora import add_lora
    from pipeline.mechanism.modeling import load_model

    model, _ = load_model(model_dir)
    peft_model = add_lora(model, r=4, alpha=8, dropout=0.0, seed=1)
    generator = torch.Generator().manual_seed(7)  # the same adapter whatever ran before
    with torch.no_grad():
        for weight, param in peft_model.named_parameters():
            if "lora_B" in weight:
                param.normal_(0, 0.05, generator=generator)
    train = root / name
    peft_model.save_pretrained(train / "adapter")
    if choice is not None:
        from pipeline.mechanism import layer_choice

        layer_choice.write(choice, train / "adapter")
    write = 0 if len(layers) == 1 else None
    store.write_manifest(
        train,
        "b" * 16,
        "train",
        {
            "read_layers": list(layers),
            "write_layer": write,
            "positions": "all",
            "align_positions": True,
        },
        {"model": model_key},
    )
    return train


def prepared_folders(root: Path, model_dir: Path) -> tuple[Path, Path]:
    """A prepared model folder with a manifest (as in the store) and a train artifact on it."""
    model = root / "prepare_model" / MODEL_KEY
    shutil.copytree(model_dir, model)
    store.write_manifest(model, MODEL_KEY, "prepare_model", {}, {})
    return model, _train_artifact(root, model, MODEL_KEY)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, tiny_model_dir):
    return prepared_folders(tmp_path_factory.mktemp("read"), tiny_model_dir)


def test_read_cli_prompt_writes_one_answer_per_question(prepared, tmp_path):
    model, train = prepared
    out = tmp_path / "answers.jsonl"
    read.main(
        [
            "--adapter",
            str(train),
            "--model",
            str(model),
            "--prompt",
            "My grandmother keeps bees behind her cottage in Wales.",
            "--question",
            "What does the user's grandmother keep?",
            "--question",
            "Where is the cottage?",
            "--max-new-tokens",
            "5",
            "--out",
            str(out),
        ]
    )
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["question"] for r in records] == [
        "What does the user's grandmother keep?",
        "Where is the cottage?",
    ]
    assert all(
        r["dialog"] == 0 and isinstance(r["answer"], str) and r["n_read_tokens"] > 10
        for r in records
    )


def test_read_cli_experiment_dialog_file_and_stdout(prepared, tmp_path, capsys, monkeypatch):
    model, train = prepared
    view = tmp_path / "results" / "exp"
    view.mkdir(parents=True)
    (view / "view.json").write_text(json.dumps({"train": str(train), "prepare_model": str(model)}))
    dialogs = tmp_path / "dialogs.jsonl"
    dialogs.write_text(
        json.dumps([{"role": "user", "content": "Hi there"}])
        + "\n"
        + json.dumps(
            {
                "messages": [
                    {"role": "system", "content": "You are a pirate."},
                    {"role": "user", "content": "Hello"},
                ],
                "n_masked_turns": 1,
            }
        )
        + "\n"
    )
    questions = tmp_path / "questions.txt"
    questions.write_text("Who is speaking?\n\nWhat is the mood?\n")
    monkeypatch.chdir(tmp_path)
    read.main(
        [
            "--experiment",
            "exp",
            "--dialogs",
            str(dialogs),
            "--questions",
            str(questions),
            "--max-new-tokens",
            "3",
            "--batch-size",
            "3",
        ]
    )
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["dialog"], r["question"]) for r in records] == [
        (0, "Who is speaking?"),
        (0, "What is the mood?"),
        (1, "Who is speaking?"),
        (1, "What is the mood?"),
    ]


def test_table_format_shows_question_and_answer_per_dialog(prepared, tmp_path):
    model, train = prepared
    out = tmp_path / "answers.txt"
    read.main(
        ["--adapter", str(train), "--model", str(model), "--prompt", "I keep bees in Wales.",
         "--prompt", "Hello there.", "--question", "What does the user keep?",
         "--max-new-tokens", "3", "--format", "table", "--out", str(out)]
    )  # fmt: skip
    text = out.read_text()
    assert text.count("── dialog ") == 2 and "── dialog 1 " in text
    assert "user: I keep bees in Wales." in text and "user: Hello there." in text
    assert text.count("What does the user keep?") == 2
    assert "{" not in text  # not JSON
    header = next(line for line in text.splitlines() if line.startswith("question"))
    assert header.split() == ["question", "answer"]


def test_mismatched_base_model_is_a_clear_error(prepared, tmp_path, tokenizer):
    model, train = prepared
    from transformers import AutoModelForCausalLM

    # Another base model of a different size: caught from the adapter's weight shapes.
    other = tmp_path / "prepare_model" / "cccccccccccccccc"
    AutoModelForCausalLM.from_config(
        tiny_config("llama", len(tokenizer), hidden_size=32, intermediate_size=64)
    ).save_pretrained(other)
    tokenizer.save_pretrained(other)
    with pytest.raises(SystemExit, match="trained on"):
        read.main(
            ["--adapter", str(train), "--model", str(other), "--prompt", "hi", "--question", "q"]
        )
    # The same architecture but another prepared model: caught from the manifests' keys.
    twin = tmp_path / "prepare_model" / "dddddddddddddddd"
    shutil.copytree(model, twin)
    (twin / store.MANIFEST).unlink()
    store.write_manifest(twin, "d" * 16, "prepare_model", {}, {})
    manifest = json.loads((train / store.MANIFEST).read_text())
    with pytest.raises(BaseModelMismatch, match=MODEL_KEY):
        check_base_model(train / "adapter", twin, manifest)
    # Without the train manifest, the adapter's recorded base path still gives it away.
    with pytest.raises(BaseModelMismatch, match="dddddddddddddddd"):
        check_base_model(train / "adapter", twin, None)
    check_base_model(train / "adapter", model, manifest)  # the right model passes


def test_load_dialogs_forms_and_errors(tmp_path):
    one = tmp_path / "one.json"
    one.write_text(json.dumps([{"role": "user", "content": "a"}]))
    assert load_dialogs(one) == [([{"role": "user", "content": "a"}], 0)]
    many = tmp_path / "many.json"
    many.write_text(
        json.dumps(
            [
                [{"role": "user", "content": "a"}],
                {
                    "messages": [
                        {"role": "system", "content": "s"},
                        {"role": "user", "content": "b"},
                    ],
                    "n_masked_turns": 1,
                },
            ]
        )
    )
    assert [k for _, k in load_dialogs(many)] == [0, 1]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('[{"role": "user", "content": "a"}]\n[{"role": "robot", "content": "b"}]\n')
    with pytest.raises(DataError, match=r"bad.jsonl: record 1: field 'messages\[0\].role'"):
        load_dialogs(bad)
    masked = tmp_path / "masked.json"
    masked.write_text(
        json.dumps({"messages": [{"role": "user", "content": "a"}], "n_masked_turns": 1})
    )
    with pytest.raises(DataError, match="n_masked_turns"):
        load_dialogs(masked)
    questions = tmp_path / "q.json"
    questions.write_text(json.dumps(["A?", "B?"]))
    assert load_questions(questions) == ["A?", "B?"]


def test_cli_argument_errors(capsys):
    with pytest.raises(SystemExit):
        read.main(["--prompt", "hi", "--question", "q"])
    assert "--experiment" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="no view"):
        read.main(
            [
                "--experiment",
                "nope",
                "--results",
                "/nonexistent",
                "--prompt",
                "hi",
                "--question",
                "q",
            ]
        )


def test_complete_lets_the_target_continue_then_reads_the_reply(talking_model_dir):
    """--complete N: the target (adapter off) writes the reply under the masked system prompt."""
    from pipeline.api import Decoder
    from pipeline.data.dialog_input import complete_dialogs
    from pipeline.mechanism.completion import generate_completions
    from pipeline.mechanism.decoder_settings import DecoderSettings
    from pipeline.mechanism.lora import add_lora
    from pipeline.mechanism.modeling import load_model

    base, tokenizer = load_model(talking_model_dir)
    system = [{"role": "system", "content": "You are a pirate."}]
    user = {"role": "user", "content": "Tell me about your day."}
    dialogs = [([*system, user], 1), ([user, {"role": "assistant", "content": "Fine."}], 0)]
    expected, _ = generate_completions(base, tokenizer, [dialogs[0][0]], 4, 1)
    model = add_lora(base, r=4, alpha=8, seed=1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)  # the adapter changes what the model says
    assert generate_completions(model, tokenizer, [dialogs[0][0]], 4, 1)[0] != expected
    completed = complete_dialogs(model, tokenizer, dialogs, 4)
    assert completed[0] == ([*system, user, {"role": "assistant", "content": expected[0]}], 1)
    assert completed[1] is dialogs[1]  # a dialog that already ends with a reply is read as is
    decoder = Decoder(model, tokenizer, DecoderSettings(read_layer=1))
    plain = decoder.read_all(dialogs)
    longer = decoder.read_all(dialogs, complete=4)
    assert longer[0].completion == expected[0] and plain[0].completion is None
    assert longer[1].completion is None and longer[1].messages == dialogs[1][0]
    assert longer[0].n_read_tokens > plain[0].n_read_tokens
    answers = decoder.ask_all(longer, ["Who?"], max_new_tokens=2)
    records = read.records(longer, answers, complete=4)
    assert records[0]["completion"] == expected[0] and records[1]["completion"] is None
    assert records[0]["n_read_tokens"] == longer[0].n_read_tokens


def test_a_decoder_of_two_layers_reads_each_question_at_its_layer(prepared, tmp_path):
    from pipeline.mechanism.layer_choice import LayerChoice

    model, _ = prepared
    choice = LayerChoice(
        losses={"template": {1: 2.0, 3: 1.0}, "relation_qa": {1: 0.5, 3: 2.0}},
        questions={
            "template": ["What persona is the assistant adopting?"],
            "relation_qa": ["Which country is mentioned?"],
        },
        layers=[1, 3],
    )
    train = _train_artifact(tmp_path, model, MODEL_KEY, (1, 3), choice, name="two")
    out = tmp_path / "answers.jsonl"
    base = ["--adapter", str(train), "--model", str(model), "--prompt", "We flew to Lyon."]
    questions = ["--question", "Which city is mentioned?", "--question", "What persona is it?"]
    read.main([*base, *questions, "--max-new-tokens", "3", "--out", str(out)])
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["read_layer"] for r in records] == [1, 3]  # auto: by the question's kind
    read.main([*base, *questions, "--read-layer", "3", "--max-new-tokens", "3", "--out", str(out)])
    assert [json.loads(x)["read_layer"] for x in out.read_text().splitlines()] == [3, 3]
    with pytest.raises(SystemExit, match=r"--read-layer 2: .*trained to read blocks \[1, 3\]"):
        read.main([*base, *questions, "--read-layer", "2"])


def test_bad_layer_flags_are_named(prepared, capsys):
    model, train = prepared
    base = ["--adapter", str(train), "--model", str(model), "--prompt", "Hi.", "--question", "Q?"]
    bad = (
        ("--read-layer", "-3"),
        ("--read-layer", "top"),
        ("--write-layer", "x"),
        ("--positions", "bogus"),
    )
    for flag, value in bad:
        with pytest.raises(SystemExit) as exited:
            read.main([*base, flag, value])
        message = str(exited.value.code)
        assert message.startswith(f"latentqa-read: {flag}") and "manifest" not in message
