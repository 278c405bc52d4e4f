"""The reading command: ask a trained decoder questions about the activations of any dialog.

    python -m pipeline.read --experiment decoder_smollm2 --prompt "I love sailing." \\
        --question "What does the user enjoy?"
    latentqa-read --adapter results/store/train/KEY/adapter --model results/store/prepare_model/K \\
        --dialogs dialogs.jsonl --questions questions.txt --out answers.jsonl

A dialog is a list of ``{role, content}`` messages, or an object ``{"messages": [...],
"n_masked_turns": k}`` whose first ``k`` turns are run through the target but not read. Each
(dialog, question) pair gives one JSON line (``--format table``: a table for a person at a
terminal). The read settings (read/write layers, positions) come from the train artifact's
manifest; the base model must be the one the adapter was trained on. A decoder trained on several
read layers reads each question at the layer its validation split chose for that kind of question
(``--read-layer auto``, the default), or at ``--read-layer L``. A thin layer over
:mod:`pipeline.api`, which notebooks use directly.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from pipeline.api import Answer, Decoder, LayerOutOfRange, NoManifest, Reading
from pipeline.data.dialog_input import check_dialogs_fit, parse_dialog
from pipeline.data.schema import DataError
from pipeline.mechanism.decoder_files import BaseModelMismatch
from pipeline.mechanism.decoder_settings import UntrainedLayer

# --- inputs ---------------------------------------------------------------------------------


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
    return [parse_dialog(record, file, i) for i, record in enumerate(records)]


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


# --- the command ----------------------------------------------------------------------------


def records(readings: list[Reading], answers: list[Answer], complete: int) -> list[dict]:
    """The JSONL records: one per (dialog, question), with the completion read where asked."""
    out = []
    for answer in answers:
        reading = readings[answer.dialog]
        record = {
            "dialog": answer.dialog,
            "question": answer.question,
            "answer": answer.answer,
            "read_layer": answer.layer,
            "n_read_tokens": reading.n_read_tokens,
        }
        if complete > 0:
            record["completion"] = reading.completion
        out.append(record)
    return out


def table(readings: list[Reading], answers: list[Answer], width: int = 100) -> str:
    """Question / answer per dialog, wrapped to ``width`` columns, for a person at a terminal."""
    import textwrap

    lines = []
    ask = max(12, min(40, max((len(a.question) for a in answers), default=0)))
    for d, reading in enumerate(readings):
        lines.append(f"── dialog {d} " + "─" * max(0, width - 12 - len(str(d))))
        for i, message in enumerate(reading.messages):
            if i < reading.n_masked_turns:
                role = f"{message['role']} (masked, not read)"
            elif message["content"] == reading.completion and i == len(reading.messages) - 1:
                role = f"{message['role']} (completion)"
            else:
                role = message["role"]
            lines += textwrap.wrap(message["content"], width, initial_indent=f"{role}: ",
                                   subsequent_indent="    ") or [f"{role}:"]  # fmt: skip
        lines.append(f"{'question':<{ask}}  answer")
        for answer in (a for a in answers if a.dialog == d):
            left = textwrap.wrap(answer.question, ask) or [""]
            right = textwrap.wrap(" ".join(answer.answer.split()), max(20, width - ask - 2))
            for k in range(max(len(left), len(right))):
                cell = left[k] if k < len(left) else ""
                lines.append(f"{cell:<{ask}}  {right[k] if k < len(right) else ''}".rstrip())
        lines.append("")
    return "\n".join(lines)


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
    p.add_argument(
        "--format",
        choices=("jsonl", "table"),
        default="jsonl",
        help="jsonl: one JSON line per (dialog, question); table: question / answer per dialog",
    )
    p.add_argument("--out", type=Path, help="write the answers here instead of stdout")
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


def load_decoder_from_args(args: argparse.Namespace) -> Decoder:
    """The decoder the flags name (checked by :func:`check_flags` first)."""
    layer = args.read_layer
    overrides = {
        "read_layer": int(layer) if layer not in (None, "auto") else None,
        "write_layer": None if args.write_layer is None else int(args.write_layer),
        "positions": args.positions,
    }
    if args.experiment:
        return Decoder.from_experiment(args.experiment, args.results, args.dtype, args.device,
                                       **overrides)  # fmt: skip
    return Decoder.from_folders(args.adapter, args.model, args.dtype, args.device, **overrides)


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = parse_args(argv)
    try:
        check_flags(args)
        dialogs = load_dialogs(args.dialogs) if args.dialogs else []
        dialogs += [([{"role": "user", "content": text}], 0) for text in args.prompt]
        questions = list(args.question)
        if args.questions:
            questions += load_questions(args.questions)
        decoder = load_decoder_from_args(args)
        decoder.batch_size = args.batch_size
        source = str(args.dialogs or "--prompt")
        check_dialogs_fit(decoder.tokenizer, decoder.model, dialogs, source)
        readings = decoder.read_all(dialogs, args.complete)
    except NoManifest as exc:
        raise SystemExit(
            f"latentqa-read: no train manifest beside {exc.adapter}: pass --read-layer N (and "
            "--write-layer, --positions if not the defaults)"
        ) from None
    except UntrainedLayer as exc:
        raise SystemExit(f"latentqa-read: --read-layer {args.read_layer}: {exc}") from None
    except LayerOutOfRange as exc:
        flag = "--" + exc.name.replace("_", "-")
        message = str(exc).replace(f"the given {exc.name}", flag)
        raise SystemExit(f"latentqa-read: {message}") from None
    except (BaseModelMismatch, DataError, FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"latentqa-read: {' '.join(str(exc).split())}") from None
    answers = decoder.ask_all(readings, questions, max_new_tokens=args.max_new_tokens)
    if args.format == "table":
        text = table(readings, answers, shutil.get_terminal_size((100, 24)).columns)
    else:
        text = "".join(
            json.dumps(r, ensure_ascii=False) + "\n"
            for r in records(readings, answers, args.complete)
        )
    if args.out:
        args.out.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
