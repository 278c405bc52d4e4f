"""What the Python API (``pipeline.api``) takes and hands back: dialogs and layers, a reading of
a dialog's activations, the decoder's answer, and the errors a caller can act on."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pipeline.mechanism.decoder_settings import DecoderSettings, UntrainedLayer
from pipeline.mechanism.reading import Read

Dialog = str | list[dict[str, str]] | dict[str, Any]
Layer = int | str
"""A read layer: a target block the decoder was trained on, ``"auto"`` (per question, the layer
chosen for its kind of question) or ``"all"`` (every layer at once, for a decoder trained so)."""
AUTO, ALL = "auto", "all"


class LayerOutOfRange(ValueError):
    """A read or write layer the model does not have."""

    def __init__(self, name: str, value: int, n_blocks: int, model_dir: Path, given: bool):
        self.name, self.value, self.given = name, value, given
        where = "the given" if given else "the train manifest's"
        super().__init__(
            f"{where} {name} {value} is beyond the model in {model_dir}: it has {n_blocks} "
            f"blocks (0..{n_blocks - 1})"
        )


class NoManifest(ValueError):
    """An adapter without a train manifest, and no read layer given to say where it reads."""

    def __init__(self, adapter: Path):
        self.adapter = adapter
        super().__init__(
            f"no train manifest beside {adapter}: pass read_layer (a block index; and "
            "write_layer, positions if not the defaults)"
        )


def check_layer(settings: DecoderSettings, layer: Layer) -> Layer:
    """``layer`` as the decoder of ``settings`` reads it: a block it was trained on, ``auto``, or
    ``all`` (``auto`` for a decoder that reads every layer at once); :class:`UntrainedLayer` for
    a layer it cannot read."""
    blocks = list(settings.read_layers)
    if settings.all_layers:
        if layer in (AUTO, ALL):
            return ALL
        if isinstance(layer, int) and not isinstance(layer, bool):
            raise UntrainedLayer(f"this decoder reads blocks {blocks} at once, not one of them")
    elif layer == AUTO:
        return AUTO
    elif layer == ALL:
        raise UntrainedLayer(f"this decoder reads one of blocks {blocks} at a time, not all")
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise ValueError(f"a read layer is a block index, {AUTO!r} or {ALL!r}, not {layer!r}")
    settings.with_layer(layer)  # refuses a block it was not trained on
    return layer


@dataclass
class Reading:
    """One dialog as the target ran it, with the activations the decoder reads."""

    messages: list[dict[str, str]]
    """The dialog's turns, the completion (if any) appended as an assistant turn."""
    n_masked_turns: int
    """Leading turns the target ran but the decoder does not read."""
    layers: tuple[int, ...]
    """The target blocks read: every block the decoder was trained on, or the one asked for."""
    read_text: str
    """The read tokens, decoded: what the activations stand for."""
    activations: torch.Tensor = field(repr=False)
    """(layers, read tokens, hidden size), float32 on the CPU: ``activations[i]`` is the output of
    block ``layers[i]``."""
    completion: str | None = None
    """What the target wrote when asked to continue the dialog (``complete=N``)."""
    input_ids: list[int] = field(default_factory=list, repr=False)
    """The dialog's tokens as the target ran them."""
    read_positions: list[int] = field(default_factory=list, repr=False)
    """Where in ``input_ids`` the read tokens are."""

    @property
    def n_read_tokens(self) -> int:
        return int(self.activations.shape[1])

    def at(self, layer: int) -> torch.Tensor:
        """(read tokens, hidden size): the output of block ``layer``."""
        if layer not in self.layers:
            raise ValueError(
                f"this reading holds blocks {list(self.layers)}, not block {layer}: read the "
                f"dialog with layer={layer} or {AUTO!r}"
            )
        return self.activations[self.layers.index(layer)]

    def read_of(self, layers: tuple[int, ...]) -> Read:
        """What the decoder is given for blocks ``layers`` (group after group)."""
        return Read(self.input_ids, self.read_positions, torch.cat([self.at(b) for b in layers]))


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
    layer: Layer | None = None
    """The target block read (``all``: every block at once; None under ``text_only``, which
    reads none)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
