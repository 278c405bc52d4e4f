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
(the read tokens given as text, no activations). A decoder trained on several read layers reads
each question at the layer its validation split chose for that kind of question (``layer="auto"``,
the default) or at a block it was trained on (``layer=15``); one that reads every layer at once
reads them all (``"all"``, its only layer). The command line (``pipeline.read``) is a thin layer
over this module.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from pathlib import Path
from typing import Any

import torch

from pipeline.data.dialog_input import check_dialogs_fit, complete_dialogs, parse_dialog
from pipeline.evaluation import conditions
from pipeline.mechanism import layer_choice
from pipeline.mechanism.decoder_files import experiment_paths, load_decoder, read_manifest_or_none
from pipeline.mechanism.decoder_prompt import build_decoder_example
from pipeline.mechanism.decoder_settings import DecoderSettings
from pipeline.mechanism.modeling import decoder_layers
from pipeline.mechanism.reading import compute_reads, generate_batched, target_mode
from pipeline.mechanism.readings import (
    ALL,
    AUTO,
    Answer,
    Dialog,
    Layer,
    LayerOutOfRange,
    NoManifest,
    Reading,
    check_layer,
)

__all__ = ["CONDITIONS", "Answer", "Decoder", "LayerOutOfRange", "NoManifest", "Reading"]

CONDITIONS = tuple(conditions.CONDITIONS)
"""What the decoder answers from (the evaluation's conditions, ``pipeline.evaluation``)."""


class Decoder:
    """A trained decoder on its base model, loaded once; reads and answers without reloading.

    ``layer`` is the read layer used where a call gives none (:func:`check_layer`); ``choice``
    the adapter's layer choice (``layer_choice.json``), which ``auto`` follows."""

    def __init__(
        self,
        model,
        tokenizer,
        settings: DecoderSettings,
        batch_size: int = 8,
        choice: layer_choice.LayerChoice | None = None,
        layer: Layer = AUTO,
    ):
        self.model, self.tokenizer, self.settings = model, tokenizer, settings
        self.batch_size = batch_size
        self.choice = choice or layer_choice.LayerChoice(layers=list(settings.read_layers))
        self.layer = check_layer(settings, layer)
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
        trained on. ``read_layer``: the layer read by default (a trained block, ``auto`` or
        ``all``); ``write_layer`` and ``positions`` replace the train manifest's. Without a
        manifest beside the adapter, ``read_layer`` (a block) is the one it reads."""
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
        layer = overrides.pop("read_layer", AUTO)
        if manifest is None:
            if isinstance(layer, bool) or not isinstance(layer, int):
                raise NoManifest(adapter)
            overrides["read_layers"] = [layer]
        settings = DecoderSettings.from_manifest(manifest or {}, overrides)
        layer = check_layer(settings, layer)  # before the model is loaded
        choice = layer_choice.read(adapter, list(settings.read_layers)) if manifest else None
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        model, tokenizer = load_decoder(model_dir, adapter, manifest, dtype, device)
        n_blocks = len(decoder_layers(model))
        depths = {"read_layer": max(settings.read_layers), "write_layer": settings.write_block}
        for name, value in depths.items():
            if value >= n_blocks:
                given = name in overrides or (name == "read_layer" and manifest is None)
                raise LayerOutOfRange(name, value, n_blocks, model_dir, given)
        return cls(model, tokenizer, settings, choice=choice, layer=layer)

    @property
    def layers(self) -> tuple[int, ...]:
        """The target blocks the decoder was trained to read."""
        return self.settings.read_layers

    def layer_for(self, question: str, layer: Layer | None = None) -> int | str:
        """The layer ``question`` is read at: ``layer`` (default: the decoder's), ``auto`` being
        the layer chosen on the validation split for the kind of question it resembles most."""
        layer = self.layer if layer is None else check_layer(self.settings, layer)
        return self.choice.for_question(question)[0] if layer == AUTO else layer

    # --- reading ------------------------------------------------------------------------------

    def read(self, dialog: Dialog, complete: int = 0, layer: Layer | None = None) -> Reading:
        """One dialog read (see :meth:`read_all`)."""
        return self.read_all([dialog], complete, layer)[0]

    def read_all(
        self, dialogs: list[Dialog], complete: int = 0, layer: Layer | None = None
    ) -> list[Reading]:
        """The target's activations of each dialog, batched. With ``complete`` > 0 the target
        first continues each dialog ending with a user turn for up to that many greedy tokens
        (its masked turns in force), and the reply is read too, as in training. ``layer``: a
        trained block reads that block alone; ``auto`` and ``all`` (default: the decoder's
        ``layer``) read every trained block, so that each question can be asked at its own."""
        parsed = [
            d if isinstance(d, tuple) else parse_dialog(d, "<dialogs>", i)
            for i, d in enumerate(dialogs)
        ]
        check_dialogs_fit(self.tokenizer, self.model, parsed, "<dialogs>")
        if complete < 0:
            raise ValueError(f"complete takes a number of tokens >= 0, not {complete}")
        layer = self.layer if layer is None else check_layer(self.settings, layer)
        blocks = self.layers if layer in (AUTO, ALL) else (int(layer),)
        # Read as a decoder of every block at once: one forward pass gives them all.
        every = dataclasses.replace(
            self.settings, read_layer=blocks[0], read_layers=blocks, all_layers=True
        )
        completed = parsed
        if complete > 0:
            completed = complete_dialogs(self.model, self.tokenizer, parsed, complete,
                                         self.batch_size)  # fmt: skip
        reads = compute_reads(self.model, self.tokenizer, completed, every, self.batch_size)
        readings = []
        for (messages, masked), before, read in zip(completed, parsed, reads, strict=True):
            added = messages[-1]["content"] if messages is not before[0] else None
            n = len(read.read_positions)
            readings.append(
                Reading(
                    messages=messages,
                    n_masked_turns=masked,
                    layers=blocks,
                    read_text=self.tokenizer.decode(
                        [read.input_ids[p] for p in read.read_positions]
                    ),
                    activations=read.acts.reshape(len(blocks), n, -1),
                    completion=added,
                    input_ids=read.input_ids,
                    read_positions=read.read_positions,
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
        layer: Layer | None = None,
    ) -> Answer:
        """The decoder's greedy answer to one question about one reading (see :meth:`ask_all`)."""
        donors = None if donor is None else [donor]
        return self.ask_all([reading], [question], condition, donors, max_new_tokens, layer)[0]

    def compare(
        self,
        reading: Reading,
        question: str,
        donor: Reading,
        max_new_tokens: int = 64,
        layer: Layer | None = None,
    ) -> dict[str, Answer]:
        """The answer under every condition, ``donor``'s activations standing in for shuffled."""
        return {
            c: self.ask(
                reading, question, c, donor if c == "shuffled" else None, max_new_tokens, layer
            )
            for c in CONDITIONS
        }

    def ask_all(
        self,
        readings: list[Reading],
        questions: list[str],
        condition: str = "true",
        donors: list[Reading] | None = None,
        max_new_tokens: int = 64,
        layer: Layer | None = None,
    ) -> list[Answer]:
        """Every question about every reading, batched: readings in order, questions in order
        within each. ``shuffled`` reads ``donors[i]`` in place of ``readings[i]``. Each question
        is read at :meth:`layer_for` (its block named to a decoder of several, as in training)."""
        if condition not in CONDITIONS:
            raise ValueError(f"condition {condition!r} is not one of {CONDITIONS}")
        if (condition == "shuffled") != (donors is not None):
            raise ValueError("give donors (readings to read instead) with condition='shuffled' "
                             "and only then")  # fmt: skip
        if donors is not None and len(donors) != len(readings):
            raise ValueError(f"{len(donors)} donors for {len(readings)} readings")
        layers = [self.layer_for(q, layer) for q in questions]
        examples, acts, where = self._inputs(readings, questions, condition, donors, layers)
        adapter_off = condition == "untrained"
        with target_mode(self.model) if adapter_off else contextlib.nullcontext():
            texts = generate_batched(
                self.model,
                self.tokenizer,
                examples,
                acts,
                self.batch_size,
                max_new_tokens,
                desc="answering",
                inject=self.settings.inject,
            )
        return [
            Answer(
                questions[q],
                text,
                condition,
                d,
                d if donors is not None else None,
                None if condition == "text_only" else layers[q],
            )
            for (d, q), text in zip(where, texts, strict=True)
        ]

    def _inputs(self, readings, questions, condition, donors, layers):
        """(decoder examples, activations, (reading, question) of each) as the evaluation's
        condition builds them."""
        align = self.settings.align_positions
        examples, acts, where = [], [], []
        for d, reading in enumerate(readings):
            source = donors[d] if donors is not None else reading
            for q, question in enumerate(questions):
                if condition == "text_only":
                    read = source.read_of(source.layers[:1])
                    examples.append(
                        conditions.text_only_example(self.tokenizer, read, question, None, align)
                    )
                    acts.append(torch.zeros(0, read.acts.shape[-1]))
                else:
                    there = self.settings
                    if layers[q] != ALL:
                        there = there.with_layer(layers[q])
                    read = source.read_of(there.layers_read)
                    examples.append(
                        build_decoder_example(self.tokenizer, read.read_positions, question,
                                              None, align, there.at())
                    )  # fmt: skip
                    acts.append(read.acts)
                where.append((d, q))
        return examples, acts, where
