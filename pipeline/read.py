"""The reading command: ask a trained decoder questions about the activations of any dialog.

    python -m pipeline.read --experiment decoder_smollm2 --prompt "I love sailing." \\
        --question "What does the user enjoy?"
    latentqa-read --adapter results/store/train/KEY/adapter --model results/store/prepare_model/K \\
        --dialogs dialogs.jsonl --questions questions.txt --out answers.jsonl

A dialog is a list of ``{role, content}`` messages, or an object ``{"messages": [...],
"n_masked_turns": k}`` whose first ``k`` turns are run through the target but not read. Each
(dialog, question) pair gives one JSON line. The read settings (read/write layer, positions) come
from the train artifact's manifest; the base model must be the one the adapter was trained on.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from pipeline.decoder import collate, generate
from pipeline.decoder_files import (
    BaseModelMismatch,
    experiment_paths,
    load_decoder,
    read_manifest_or_none,
)
from pipeline.dialogs import DecoderExample, build_decoder_example, tokenize_read_dialog
from pipeline.patching import gather, pad_batch, read_activations
from pipeline.schema import ROLES, DataError


@dataclass(frozen=True)
class DecoderSettings:
    """How the decoder was trained to read: taken from the train artifact's manifest."""

    read_layer: int
    write_layer: int = 0
    positions: str = "all"
    align_positions: bool = True
    cached: bool = False
    """Trained on bf16-cached activations: reads are rounded to bf16 the same way."""

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> DecoderSettings:
        params = manifest.get("params", {})
        if "read_layer" not in params:
            raise ValueError("the train manifest has no params.read_layer")
        return cls(
            read_layer=int(params["read_layer"]),
            write_layer=int(params.get("write_layer", 0)),
            positions=str(params.get("positions", "all")),
            align_positions=bool(params.get("align_positions", True)),
            cached=params.get("mode") == "cached",
        )


@dataclass
class Read:
    """One read dialog as the target saw it, with the activations the decoder reads."""

    input_ids: list[int]
    read_positions: list[int]
    acts: torch.Tensor
    """(n, D) float32 on the CPU, one row per read position."""


def target_mode(model):
    """The target is the decoder's module with its adapter disabled (if it has one)."""
    if hasattr(model, "disable_adapter"):
        return model.disable_adapter()
    return contextlib.nullcontext()


def _device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def compute_reads(
    model,
    tokenizer,
    dialogs: list[tuple[list[dict], int]],
    settings: DecoderSettings,
    batch_size: int = 8,
    desc: str = "reading",
) -> list[Read]:
    """The target's activations at ``settings.read_layer`` for each (messages, n_masked_turns)."""
    tokenized = [tokenize_read_dialog(tokenizer, m, k, settings.positions) for m, k in dialogs]
    reads: list[Read | None] = [None] * len(tokenized)
    order = sorted(range(len(tokenized)), key=lambda i: len(tokenized[i].input_ids))
    device = _device(model)
    pad = tokenizer.pad_token_id
    for start in tqdm(
        range(0, len(order), batch_size),
        desc=desc,
        file=sys.stderr,
        disable=len(order) <= batch_size,
    ):
        chunk = order[start : start + batch_size]
        ids, mask = pad_batch([tokenized[i].input_ids for i in chunk], pad)
        positions = torch.arange(ids.shape[1]).expand(len(chunk), -1)
        with target_mode(model):
            acts = read_activations(
                model,
                ids.to(device),
                mask.to(device),
                [settings.read_layer],
                position_ids=positions.to(device),
            )[settings.read_layer]
        rows = gather(acts, [tokenized[i].read_positions for i in chunk])
        for i, value in zip(chunk, rows, strict=True):
            value = value.float().cpu()
            if settings.cached:
                value = value.to(torch.bfloat16).float()
            reads[i] = Read(tokenized[i].input_ids, tokenized[i].read_positions, value)
    return reads  # type: ignore[return-value]


def generate_batched(
    model,
    tokenizer,
    examples: list[DecoderExample],
    acts: list[torch.Tensor],
    write_layer: int,
    batch_size: int = 8,
    max_new_tokens: int = 32,
    desc: str = "generating",
) -> list[str]:
    """Greedy answers for many decoder prompts, batched by length, in the input order."""
    out: list[str] = [""] * len(examples)
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    device = _device(model)
    for start in tqdm(range(0, len(order), batch_size), desc=desc, file=sys.stderr):
        chunk = order[start : start + batch_size]
        batch = collate(
            [examples[i] for i in chunk],
            [acts[i] for i in chunk],
            tokenizer.pad_token_id,
            padding_side="left",
        ).to(device)
        for i, text in zip(
            chunk, generate(model, tokenizer, batch, write_layer, max_new_tokens), strict=True
        ):
            out[i] = text
    return out


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


def load_dialogs(path: Path) -> list[tuple[list[dict], int]]:
    """Dialogs from a JSON file (one dialog or a list of them) or a JSONL file (one per line)."""
    file = str(path)
    text = path.read_text(encoding="utf-8")
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
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        data = json.loads(text)
        if not isinstance(data, list) or not all(isinstance(q, str) and q.strip() for q in data):
            raise DataError(str(path), None, "<top level>", "expected a list of question strings")
        return data
    return [line.strip() for line in text.splitlines() if line.strip()]


# --- the command ----------------------------------------------------------------------------


def answer(
    model,
    tokenizer,
    settings: DecoderSettings,
    dialogs: list[tuple[list[dict], int]],
    questions: list[str],
    batch_size: int = 8,
    max_new_tokens: int = 64,
) -> list[dict]:
    """One record per (dialog, question), dialogs in order, questions in order within each."""
    reads = compute_reads(model, tokenizer, dialogs, settings, batch_size)
    examples, acts, where = [], [], []
    for d, read in enumerate(reads):
        for q, question in enumerate(questions):
            examples.append(
                build_decoder_example(
                    tokenizer, read.read_positions, question, None, settings.align_positions
                )
            )
            acts.append(read.acts)
            where.append((d, q))
    texts = generate_batched(
        model,
        tokenizer,
        examples,
        acts,
        settings.write_layer,
        batch_size,
        max_new_tokens,
        desc="answering",
    )
    return [
        {
            "dialog": d,
            "question": questions[q],
            "answer": text,
            "n_read_tokens": len(reads[d].read_positions),
        }
        for (d, q), text in zip(where, texts, strict=True)
    ]


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
    src.add_argument("--read-layer", type=int, help="override the train manifest's read_layer")
    src.add_argument("--write-layer", type=int, help="override the train manifest's write_layer")
    src.add_argument("--positions", help="override the read positions (all or last:K)")
    p.add_argument("--dialogs", type=Path, help="a JSON or JSONL file of dialogs")
    p.add_argument(
        "--prompt", action="append", default=[], help="a one-user-turn dialog (repeatable)"
    )
    p.add_argument("--question", action="append", default=[], help="a question (repeatable)")
    p.add_argument("--questions", type=Path, help="a file of questions (.json list, or lines)")
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
        adapter, model_dir, manifest = resolve_decoder(args)
        overrides = {
            k: v
            for k, v in (
                ("read_layer", args.read_layer),
                ("write_layer", args.write_layer),
                ("positions", args.positions),
            )
            if v is not None
        }
        if manifest is None and "read_layer" not in overrides:
            raise ValueError(
                f"no train manifest beside {adapter}: pass --read-layer "
                f"(and --write-layer, --positions if not the defaults)"
            )
        base = manifest or {"params": {}}
        settings = DecoderSettings.from_manifest(
            {"params": {**base.get("params", {}), **overrides}}
        )
        dialogs = load_dialogs(args.dialogs) if args.dialogs else []
        dialogs += [([{"role": "user", "content": text}], 0) for text in args.prompt]
        questions = list(args.question)
        if args.questions:
            questions += load_questions(args.questions)
        model, tokenizer = load_decoder(model_dir, adapter, manifest, args.dtype, args.device)
    except (BaseModelMismatch, DataError, FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"latentqa-read: {exc}") from None
    records = answer(
        model, tokenizer, settings, dialogs, questions, args.batch_size, args.max_new_tokens
    )
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    if args.out:
        args.out.write_text(lines, encoding="utf-8")
    else:
        sys.stdout.write(lines)


if __name__ == "__main__":
    main()
