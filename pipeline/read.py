"""The reading command: ask a trained decoder questions about the activations of any dialog.

    python -m pipeline.read --experiment decoder_smollm2 --prompt "I love sailing." \\
        --question "What does the user enjoy?"
    latentqa-read --adapter results/store/train/KEY/adapter --model results/store/prepare_model/K \\
        --dialogs dialogs.jsonl --questions questions.txt --out answers.jsonl

A dialog is a list of ``{role, content}`` messages, or an object ``{"messages": [...],
"n_masked_turns": k}`` whose first ``k`` turns are run through the target but not read. Each
(dialog, question) pair gives one JSON line. The read settings (read/write layers, positions) come
from the train artifact's manifest; the base model must be the one the adapter was trained on. A
decoder trained on several read layers reads each question at the layer its validation split chose
for that kind of question (``--read-layer auto``, the default), or at ``--read-layer L``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from pipeline.data.schema import ROLES, DataError
from pipeline.mechanism import layer_choice
from pipeline.mechanism.decoder_files import (
    BaseModelMismatch,
    experiment_paths,
    load_decoder,
    read_manifest_or_none,
)
from pipeline.mechanism.decoder_settings import DecoderSettings, UntrainedLayer
from pipeline.mechanism.dialogs import build_decoder_example
from pipeline.mechanism.modeling import decoder_layers
from pipeline.mechanism.reading import compute_reads, generate_batched, target_mode

# --- inputs ---------------------------------------------------------------------------------


def _dialog(value: Any, file: str, index: int) -> tuple[list[dict], int]:
    masked: Any = 0
    if isinstance(value, dict):
        unknown = sorted(set(value) - {"messages", "n_masked_turns", "id"})
        if unknown:
            raise DataError(
                file,
                index,
                unknown[0],
                "unknown field; expected messages, n_masked_turns (and optionally id)",
            )
        masked = value.get("n_masked_turns", 0)
        value = value.get("messages")
    if not isinstance(value, list) or not value:
        raise DataError(file, index, "messages", "expected a non-empty list of messages")
    messages = []
    for j, message in enumerate(value):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise DataError(file, index, f"messages[{j}].role", f"expected a role in {ROLES}")
        if not isinstance(message.get("content"), str):
            raise DataError(file, index, f"messages[{j}].content", "expected a string")
        messages.append({"role": message["role"], "content": message["content"]})
    if isinstance(masked, bool) or not isinstance(masked, int) or not 0 <= masked < len(messages):
        raise DataError(
            file,
            index,
            "n_masked_turns",
            f"{masked!r} must be an integer in 0..{len(messages) - 1}",
        )
    return messages, masked


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(str(path), None, "<file>", "does not exist") from None
    except UnicodeDecodeError as exc:
        raise DataError(
            str(path), None, "<file>", f"not UTF-8 text (byte {exc.start}: {exc.reason})"
        ) from None


def load_dialogs(path: Path) -> list[tuple[list[dict], int]]:
    """Dialogs from a JSON file (one dialog or a list of them) or a JSONL file (one per line)."""
    file = str(path)
    text = _read_text(path)
    try:
        data = json.loads(text)
        records = data if isinstance(data, list) and data and not _is_message(data[0]) else [data]
    except json.JSONDecodeError:
        records = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise DataError(
                        file, len(records), "<json>", f"line {n} is not JSON: {exc.msg}"
                    ) from None
    if not records:
        raise DataError(file, None, "<file>", "no dialogs")
    return [_dialog(record, file, i) for i, record in enumerate(records)]


def _is_message(value: Any) -> bool:
    return isinstance(value, dict) and "role" in value


def load_questions(path: Path) -> list[str]:
    """Questions from a JSON list of strings, or a text file with one question per line."""
    text = _read_text(path)
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(str(path), None, "<json>", f"not JSON: {exc}") from None
        if not isinstance(data, list) or not all(isinstance(q, str) and q.strip() for q in data):
            raise DataError(str(path), None, "<top level>", "expected a list of question strings")
        questions = data
    else:
        questions = [line.strip() for line in text.splitlines() if line.strip()]
    if not questions:
        raise DataError(str(path), None, "<file>", "no questions")
    return questions


def check_dialogs_fit(tokenizer, model, dialogs: list[tuple[list[dict], int]], file: str) -> None:
    """Refuse dialogs longer than the model's positions (they would be read wrongly, slowly)."""
    limit = getattr(model.config.get_text_config(), "max_position_embeddings", None)
    if not limit:
        return
    for index, (messages, _) in enumerate(dialogs):
        text = tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=messages[-1]["role"] == "user"
        )
        n = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        if n > limit:
            raise DataError(
                file,
                index,
                "messages",
                f"the dialog is {n} tokens, beyond the model's {limit} positions; shorten it",
            )


# --- the command ----------------------------------------------------------------------------


def complete_dialogs(
    model, tokenizer, dialogs: list[tuple[list[dict], int]], tokens: int, batch_size: int = 8
) -> list[tuple[list[dict], int]]:
    """Each dialog that ends with a user turn, continued by the target itself (adapter off) for
    up to ``tokens`` greedy tokens as an assistant turn, as the training dialogs were: the masked
    turns (a system prompt) steer the reply, and the decoder then reads it too."""
    from pipeline.mechanism.completion import generate_completions

    open_ends = [i for i, (messages, _) in enumerate(dialogs) if messages[-1]["role"] == "user"]
    with target_mode(model):
        replies, _ = generate_completions(
            model, tokenizer, [dialogs[i][0] for i in open_ends], tokens, batch_size
        )
    completed = list(dialogs)
    for i, reply in zip(open_ends, replies, strict=True):
        if reply:
            messages, masked = dialogs[i]
            completed[i] = ([*messages, {"role": "assistant", "content": reply}], masked)
    return completed


def answer(
    model,
    tokenizer,
    settings: DecoderSettings,
    dialogs: list[tuple[list[dict], int]],
    questions: list[str],
    batch_size: int = 8,
    max_new_tokens: int = 64,
    complete: int = 0,
    layers: list[int] | None = None,
) -> list[dict]:
    """One record per (dialog, question), dialogs in order, questions in order within each.

    ``layers``: the read layer of each question (default: ``settings.read_layer`` for all). With
    ``complete`` > 0 the target first continues each dialog (:func:`complete_dialogs`); the
    record then carries the completion it read.
    """
    layers = layers or [settings.read_layer] * len(questions)
    added: list[str | None] = [None] * len(dialogs)
    if complete > 0:
        completed = complete_dialogs(model, tokenizer, dialogs, complete, batch_size)
        for i, (new, old) in enumerate(zip(completed, dialogs, strict=True)):
            added[i] = new[0][-1]["content"] if new is not old else None
        dialogs = completed
    at = {
        layer: settings if settings.all_layers else settings.with_layer(layer)
        for layer in sorted(set(layers))
    }
    reads = {
        layer: compute_reads(model, tokenizer, dialogs, there, batch_size)
        for layer, there in at.items()
    }
    examples, acts, where = [], [], []
    for d in range(len(dialogs)):
        for q, question in enumerate(questions):
            read, there = reads[layers[q]][d], at[layers[q]]
            examples.append(
                build_decoder_example(
                    tokenizer,
                    read.read_positions,
                    question,
                    None,
                    there.align_positions,
                    there.at(),
                )
            )
            acts.append(read.acts)
            where.append((d, q))
    texts = generate_batched(
        model,
        tokenizer,
        examples,
        acts,
        batch_size,
        max_new_tokens,
        desc="answering",
        inject=settings.inject,
    )
    records = [
        {
            "dialog": d,
            "question": questions[q],
            "answer": text,
            "read_layer": "all" if settings.all_layers else layers[q],
            "n_read_tokens": len(reads[layers[q]][d].read_positions),
        }
        for (d, q), text in zip(where, texts, strict=True)
    ]
    if complete > 0:
        for record in records:
            record["completion"] = added[record["dialog"]]
    return records


def check_flags(args: argparse.Namespace) -> None:
    """Refuse a malformed --read-layer, --write-layer or --positions, naming the flag (the
    train manifest is never blamed for a flag)."""
    from pipeline.mechanism.dialogs import parse_positions

    for flag, value, auto in (
        ("--read-layer", args.read_layer, True),
        ("--write-layer", args.write_layer, False),
    ):
        if value is None or (auto and value == "auto"):
            continue
        if not value.isdigit():
            what = "a block index (0, 1, ...)" + (" or 'auto'" if auto else "")
            raise ValueError(f"{flag} {value!r}: expected {what}")
    if args.positions is not None:
        try:
            parse_positions(args.positions)
        except ValueError as exc:
            raise ValueError(f"--positions: {exc}") from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="latentqa-read", description=__doc__.split("\n\n")[0])
    src = p.add_argument_group("decoder (an experiment, or an adapter and its base model)")
    src.add_argument("--experiment", help="an experiment name: results/NAME/view.json")
    src.add_argument("--results", type=Path, default=Path("results"), help="the results folder")
    src.add_argument(
        "--adapter",
        type=Path,
        help="a PEFT adapter folder (a train artifact's adapter/, or the train artifact itself)",
    )
    src.add_argument("--model", type=Path, help="the prepared base model folder")
    src.add_argument(
        "--read-layer",
        help="the target block to read: one the decoder was trained on, or 'auto' (default): "
        "per question, the layer its validation split chose for that kind of question",
    )
    src.add_argument("--write-layer", help="override the train manifest's write_layer")
    src.add_argument("--positions", help="override the read positions (all or last:K)")
    p.add_argument("--dialogs", type=Path, help="a JSON or JSONL file of dialogs")
    p.add_argument(
        "--prompt", action="append", default=[], help="a one-user-turn dialog (repeatable)"
    )
    p.add_argument("--question", action="append", default=[], help="a question (repeatable)")
    p.add_argument("--questions", type=Path, help="a file of questions (.json list, or lines)")
    p.add_argument(
        "--complete",
        type=int,
        default=0,
        metavar="N",
        help="first let the target continue each dialog ending with a user turn for N greedy "
        "tokens (under its masked turns), then read the reply too, as in training",
    )
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, help="write JSONL here instead of stdout")
    args = p.parse_args(argv)
    if bool(args.experiment) == bool(args.adapter):
        p.error("give either --experiment NAME or --adapter PATH (with --model PATH)")
    if args.adapter and not args.model:
        p.error("--adapter needs --model, the base model it was trained on")
    if not args.dialogs and not args.prompt:
        p.error("give dialogs with --dialogs FILE or --prompt TEXT")
    if args.complete < 0:
        p.error("--complete takes a number of tokens >= 0")
    if not args.question and not args.questions:
        p.error("give questions with --question TEXT or --questions FILE")
    return args


def resolve_decoder(args: argparse.Namespace) -> tuple[Path, Path, dict[str, Any] | None]:
    """(adapter folder, model folder, train manifest or None) from the command line."""
    if args.experiment:
        train, model = experiment_paths(args.experiment, args.results)
        return train / "adapter", model, read_manifest_or_none(train)
    adapter = args.adapter
    if (adapter / "adapter").is_dir():
        adapter = adapter / "adapter"
    return adapter, args.model, read_manifest_or_none(adapter.parent)


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = parse_args(argv)
    try:
        check_flags(args)
        layer = int(args.read_layer) if args.read_layer not in (None, "auto") else None
        adapter, model_dir, manifest = resolve_decoder(args)
        overrides: dict[str, Any] = {}
        if args.write_layer is not None:
            overrides["write_layer"] = int(args.write_layer)
        if args.positions is not None:
            overrides["positions"] = args.positions
        if manifest is None:
            if layer is None:
                raise ValueError(
                    f"no train manifest beside {adapter}: pass --read-layer N "
                    f"(and --write-layer, --positions if not the defaults)"
                )
            overrides["read_layers"] = [layer]
        settings = DecoderSettings.from_manifest(manifest or {}, overrides)
        questions = list(args.question)
        if args.questions:
            questions += load_questions(args.questions)
        if settings.all_layers:
            if layer is not None:
                raise ValueError(
                    f"--read-layer {layer}: this decoder reads blocks "
                    f"{list(settings.read_layers)} at once, not one of them"
                )
            layers = [settings.read_layer] * len(questions)
        elif layer is not None:
            try:
                settings = settings.with_layer(layer)
            except UntrainedLayer as exc:
                raise ValueError(f"--read-layer {layer}: {exc}") from None
            layers = [settings.read_layer] * len(questions)
        else:
            choice = layer_choice.read(adapter, list(settings.read_layers))
            layers = [choice.for_question(q)[0] for q in questions]
        dialogs = load_dialogs(args.dialogs) if args.dialogs else []
        dialogs += [([{"role": "user", "content": text}], 0) for text in args.prompt]
        model, tokenizer = load_decoder(model_dir, adapter, manifest, args.dtype, args.device)
        n_blocks = len(decoder_layers(model))
        checks = {"read_layer": max(settings.read_layers), "write_layer": settings.write_block}
        for name, block in checks.items():
            if block >= n_blocks:
                flag = "--" + name.replace("_", "-")
                given = name in overrides or (name == "read_layer" and manifest is None)
                where = flag if given else f"the train manifest's {name}"
                raise ValueError(
                    f"{where} {block} is beyond the model in {model_dir}: "
                    f"it has {n_blocks} blocks (0..{n_blocks - 1})"
                )
        check_dialogs_fit(tokenizer, model, dialogs, str(args.dialogs or "--prompt"))
    except (BaseModelMismatch, DataError, FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"latentqa-read: {' '.join(str(exc).split())}") from None
    records = answer(
        model,
        tokenizer,
        settings,
        dialogs,
        questions,
        args.batch_size,
        args.max_new_tokens,
        args.complete,
        layers,
    )
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    if args.out:
        args.out.write_text(lines, encoding="utf-8")
    else:
        sys.stdout.write(lines)


if __name__ == "__main__":
    main()
