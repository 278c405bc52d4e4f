"""Reading activations from Python (a notebook): load a trained decoder once, read dialogs, ask.

    from pipeline.api import Decoder

    decoder = Decoder.from_experiment("decoder_smollm2")
    reading = decoder.read("Tell me about your weekend.")
    decoder.ask(reading, "What is the user's mood?").answer

A dialog is a string (one user turn), a list of ``{role, content}`` messages, or an object
``{"messages": [...], "n_masked_turns": k}`` whose first ``k`` turns the target runs but the
decoder does not read (the shapes ``pipeline.read`` takes from files). Answers come under the
evaluation's conditions: ``true`` (the dialog's own activations), ``shuffled`` (another dialog's,
given as ``donor``), ``untrained`` (the adapter off: the base model reads them) and ``text_only``
(the read tokens given as text, no activations). The command line (``pipeline.read``) is a thin
layer over this module.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pipeline.data.schema import ROLES, DataError
from pipeline.mechanism.decoder_files import experiment_paths, load_decoder, read_manifest_or_none
from pipeline.mechanism.decoder_settings import DecoderSettings
from pipeline.mechanism.dialogs import build_decoder_example
from pipeline.mechanism.modeling import decoder_layers
from pipeline.mechanism.reading import Read, compute_reads, generate_batched, target_mode

CONDITIONS = ("true", "shuffled", "untrained", "text_only")
"""What the decoder answers from (the evaluation's conditions, ``pipeline.evaluation``)."""

Dialog = str | list[dict[str, str]] | dict[str, Any]


class LayerOutOfRange(ValueError):
    """A read or write layer the model does not have."""

    def __init__(self, name: str, value: int, n_blocks: int, model_dir: Path, given: bool):
        self.name, self.value, self.given = name, value, given
        where = "the given" if given else "the train manifest's"
        super().__init__(
            f"{where} {name} {value} is beyond the model in {model_dir}: it has {n_blocks} "
            f"blocks (0..{n_blocks - 1})"
        )


@dataclass
class Reading:
    """One dialog as the target ran it, with the activations the decoder reads."""

    messages: list[dict[str, str]]
    """The dialog's turns, the completion (if any) appended as an assistant turn."""
    n_masked_turns: int
    """Leading turns the target ran but the decoder does not read."""
    layer: int
    """The target block whose output was read."""
    read_text: str
    """The read tokens, decoded: what the activations stand for."""
    activations: torch.Tensor = field(repr=False)
    """(read tokens, hidden size), float32 on the CPU."""
    completion: str | None = None
    """What the target wrote when asked to continue the dialog (``complete=N``)."""
    _read: Read = field(default=None, repr=False)  # type: ignore[assignment]

    @property
    def n_read_tokens(self) -> int:
        return int(self.activations.shape[0])


@dataclass
class Answer:
    """The decoder's greedy answer to one question about one reading, under one condition."""

    question: str
    answer: str
    condition: str
    dialog: int = 0
    """Which reading (its index among those asked about)."""
    donor: int | None = None
    """Under ``shuffled``: which donor reading's activations were read."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def parse_dialog(value: Any, file: str = "<dialog>", index: int = 0) -> tuple[list[dict], int]:
    """(messages, n_masked_turns) from any dialog shape, or a DataError naming the field."""
    if isinstance(value, str):
        value = [{"role": "user", "content": value}]
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


class Decoder:
    """A trained decoder on its base model, loaded once; reads and answers without reloading."""

    def __init__(self, model, tokenizer, settings: DecoderSettings, batch_size: int = 8):
        self.model, self.tokenizer, self.settings = model, tokenizer, settings
        self.batch_size = batch_size
        self.n_blocks = len(decoder_layers(model))

    @classmethod
    def from_folders(
        cls,
        adapter: str | Path,
        model: str | Path,
        dtype: str = "float32",
        device: str = "auto",
        **overrides: Any,
    ) -> Decoder:
        """A PEFT adapter (a train artifact or its ``adapter/``) on the prepared model it was
        trained on. ``overrides`` (``read_layer``, ``write_layer``, ``positions``) replace the
        train manifest's; without a manifest beside the adapter, ``read_layer`` is needed."""
        adapter = Path(adapter)
        if (adapter / "adapter").is_dir():
            adapter = adapter / "adapter"
        return cls._load(adapter, Path(model), read_manifest_or_none(adapter.parent), dtype,
                         device, overrides)  # fmt: skip

    @classmethod
    def from_experiment(
        cls,
        name: str,
        results: str | Path = "results",
        dtype: str = "float32",
        device: str = "auto",
        **overrides: Any,
    ) -> Decoder:
        """The decoder of an experiment that has run (``results/<name>/view.json``)."""
        train, model = experiment_paths(name, Path(results))
        manifest = read_manifest_or_none(train)
        return cls._load(train / "adapter", model, manifest, dtype, device, overrides)

    @classmethod
    def _load(cls, adapter, model_dir, manifest, dtype, device, overrides) -> Decoder:
        overrides = {k: v for k, v in overrides.items() if v is not None}
        unknown = sorted(set(overrides) - {"read_layer", "write_layer", "positions"})
        if unknown:
            raise TypeError(f"unknown decoder settings {unknown}")
        if manifest is None and "read_layer" not in overrides:
            raise ValueError(
                f"no train manifest beside {adapter}: pass read_layer "
                "(and write_layer, positions if not the defaults)"
            )
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        settings = DecoderSettings.from_manifest(manifest or {}, overrides)
        model, tokenizer = load_decoder(model_dir, adapter, manifest, dtype, device)
        decoder = cls(model, tokenizer, settings)
        for name in ("read_layer", "write_layer"):
            value = getattr(settings, name)
            if value >= decoder.n_blocks:
                raise LayerOutOfRange(name, value, decoder.n_blocks, model_dir, name in overrides)
        return decoder

    # --- reading ------------------------------------------------------------------------------

    def read(self, dialog: Dialog, complete: int = 0, layer: int | None = None) -> Reading:
        """One dialog read (see :meth:`read_all`)."""
        return self.read_all([dialog], complete, layer)[0]

    def read_all(
        self, dialogs: list[Dialog], complete: int = 0, layer: int | None = None
    ) -> list[Reading]:
        """The target's activations of each dialog, batched. With ``complete`` > 0 the target
        first continues each dialog ending with a user turn for up to that many greedy tokens
        (its masked turns in force), and the reply is read too, as in training. ``layer``: the
        target block read (default: the one the decoder was trained on)."""
        parsed = [
            d if isinstance(d, tuple) else parse_dialog(d, "<dialogs>", i)
            for i, d in enumerate(dialogs)
        ]
        check_dialogs_fit(self.tokenizer, self.model, parsed, "<dialogs>")
        if complete < 0:
            raise ValueError(f"complete takes a number of tokens >= 0, not {complete}")
        settings = self.settings
        if layer is not None:
            if not 0 <= layer < self.n_blocks:
                raise ValueError(f"layer {layer}: the model has blocks 0..{self.n_blocks - 1}")
            settings = dataclasses.replace(settings, read_layer=layer)
        completed = parsed
        if complete > 0:
            completed = complete_dialogs(self.model, self.tokenizer, parsed, complete,
                                         self.batch_size)  # fmt: skip
        reads = compute_reads(self.model, self.tokenizer, completed, settings, self.batch_size)
        readings = []
        for (messages, masked), before, read in zip(completed, parsed, reads, strict=True):
            added = messages[-1]["content"] if messages is not before[0] else None
            readings.append(
                Reading(
                    messages=messages,
                    n_masked_turns=masked,
                    layer=settings.read_layer,
                    read_text=self.tokenizer.decode(
                        [read.input_ids[p] for p in read.read_positions]
                    ),
                    activations=read.acts,
                    completion=added,
                    _read=read,
                )
            )
        return readings

    # --- asking -------------------------------------------------------------------------------

    def ask(
        self,
        reading: Reading,
        question: str,
        condition: str = "true",
        donor: Reading | None = None,
        max_new_tokens: int = 64,
    ) -> Answer:
        """The decoder's greedy answer to one question about one reading (see :meth:`ask_all`)."""
        donors = None if donor is None else [donor]
        return self.ask_all([reading], [question], condition, donors, max_new_tokens)[0]

    def compare(
        self, reading: Reading, question: str, donor: Reading, max_new_tokens: int = 64
    ) -> dict[str, Answer]:
        """The answer under every condition, ``donor``'s activations standing in for shuffled."""
        return {
            c: self.ask(reading, question, c, donor if c == "shuffled" else None, max_new_tokens)
            for c in CONDITIONS
        }

    def ask_all(
        self,
        readings: list[Reading],
        questions: list[str],
        condition: str = "true",
        donors: list[Reading] | None = None,
        max_new_tokens: int = 64,
    ) -> list[Answer]:
        """Every question about every reading, batched: readings in order, questions in order
        within each. ``shuffled`` reads ``donors[i]`` in place of ``readings[i]``."""
        from pipeline.evaluation.evaluate import text_only_example

        if condition not in CONDITIONS:
            raise ValueError(f"condition {condition!r} is not one of {CONDITIONS}")
        if (condition == "shuffled") != (donors is not None):
            raise ValueError("give donors (readings to read instead) with condition='shuffled' "
                             "and only then")  # fmt: skip
        if donors is not None and len(donors) != len(readings):
            raise ValueError(f"{len(donors)} donors for {len(readings)} readings")
        align = self.settings.align_positions
        examples, acts, where = [], [], []
        for d, reading in enumerate(readings):
            read = (donors[d] if donors is not None else reading)._read
            for q, question in enumerate(questions):
                if condition == "text_only":
                    examples.append(text_only_example(self.tokenizer, read, question, None, align))
                    acts.append(torch.zeros(0, read.acts.shape[-1]))
                else:
                    examples.append(
                        build_decoder_example(self.tokenizer, read.read_positions, question,
                                              None, align)
                    )  # fmt: skip
                    acts.append(read.acts)
                where.append((d, q))
        adapter_off = condition == "untrained"
        with target_mode(self.model) if adapter_off else contextlib.nullcontext():
            texts = generate_batched(
                self.model,
                self.tokenizer,
                examples,
                acts,
                self.settings.write_layer,
                self.batch_size,
                max_new_tokens,
                desc="answering",
            )
        return [
            Answer(questions[q], text, condition, d, d if donors is not None else None)
            for (d, q), text in zip(where, texts, strict=True)
        ]
