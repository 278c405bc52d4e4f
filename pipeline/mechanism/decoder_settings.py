"""How a decoder reads: the settings every user of a trained decoder takes from its manifest.

Evaluate, control, the report and ``pipeline.read`` all build them with
:meth:`DecoderSettings.from_manifest`, the one place that turns a train artifact's params into
read and write layers, positions and the cache rounding. A decoder may be trained on several read
layers; a :class:`DecoderSettings` reads at one of them (``read_layer``), and
:meth:`DecoderSettings.with_layer` gives the same decoder reading at another.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.mechanism.decoder_prompt import ReadAt
from pipeline.mechanism.dialogs import INJECT_MODES, Inject, parse_positions


class UntrainedLayer(ValueError):
    """A read layer the decoder was not trained on."""


@dataclass(frozen=True)
class DecoderSettings:
    """How the decoder was trained to read (from the train artifact's manifest)."""

    read_layer: int
    """The target block read now (one of ``read_layers``)."""
    write_layer: int | None = 0
    """The decoder block written at the placeholders; None: the block read (same depth)."""
    positions: str = "all"
    """Read positions: ``all`` or ``last:K``."""
    align_positions: bool = True
    """Placeholders carry the target's position ids."""
    cached: bool = False
    """Trained on bf16-cached activations: reads are rounded to bf16 the same way."""
    read_layers: tuple[int, ...] = ()
    """Every target block the decoder was trained to read (default: ``read_layer`` alone)."""
    inject: Inject = "replace"
    """How activations are written (``dialogs.INJECT_MODES``)."""
    all_layers: bool = False
    """Read every layer of ``read_layers`` at once, one named placeholder group each (a decoder
    trained with ``read_all_layers``); ``read_layer`` is then only where :meth:`with_layer`
    reads alone."""

    def __post_init__(self) -> None:
        if not self.read_layers:
            object.__setattr__(self, "read_layers", (self.read_layer,))
        object.__setattr__(self, "read_layers", tuple(sorted(set(self.read_layers))))
        if self.read_layer not in self.read_layers:
            raise UntrainedLayer(self._untrained(self.read_layer))
        if self.inject not in INJECT_MODES:
            raise ValueError(f"inject must be one of {INJECT_MODES}, not {self.inject!r}")

    def _untrained(self, layer: int) -> str:
        return f"the decoder was trained to read blocks {list(self.read_layers)}, not block {layer}"

    @property
    def write_block(self) -> int:
        """The decoder block written when reading ``read_layer``."""
        return self.read_layer if self.write_layer is None else self.write_layer

    @property
    def lowest_write_block(self) -> int:
        """The lowest decoder block any trained read layer is written at."""
        return min(self.read_layers) if self.write_layer is None else self.write_layer

    @property
    def layers_read(self) -> tuple[int, ...]:
        """The target blocks one read takes, in the order of the placeholder groups."""
        return self.read_layers if self.all_layers else (self.read_layer,)

    def at(self) -> ReadAt | list[ReadAt]:
        """Where an example read now comes from and goes, named when there are several layers
        (a list, one per placeholder group, for a decoder reading every layer at once)."""
        named = len(self.read_layers) > 1
        ats = [ReadAt(layer, self.write_of(layer), named) for layer in self.layers_read]
        return ats if self.all_layers else ats[0]

    def write_of(self, layer: int) -> int:
        """The decoder block that target block ``layer`` is written at."""
        return layer if self.write_layer is None else self.write_layer

    def with_layer(self, layer: int) -> DecoderSettings:
        """The same decoder reading block ``layer`` alone (refused unless it was trained on
        it)."""
        if layer not in self.read_layers:
            raise UntrainedLayer(self._untrained(layer))
        return dataclasses.replace(self, read_layer=layer, all_layers=False)

    @classmethod
    def from_manifest(
        cls,
        manifest: Mapping[str, Any],
        overrides: Mapping[str, Any] | None = None,
        where: str = "the train manifest",
        layer: int | None = None,
    ) -> DecoderSettings:
        """The settings in ``manifest['params']``, with ``overrides`` (e.g. command-line) on top,
        reading at ``layer`` (default: the deepest trained layer)."""
        params = {**manifest.get("params", {}), **(overrides or {})}
        layers = params.get("read_layers")
        if layers is None and "read_layer" in params:  # decoders trained before read_layers
            layers = [params["read_layer"]]
        if not layers or not isinstance(layers, list | tuple):
            raise ValueError(f"{where} has no params.read_layers")
        write = params.get("write_layer", 0)
        for value in [*layers, *([] if write is None else [write])]:
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{where}: read and write layers must be block indices: {value!r}")
        positions = str(params.get("positions", "all"))
        try:
            parse_positions(positions)
        except ValueError as exc:
            raise ValueError(f"{where}: params.positions: {exc}") from None
        inject = params.get("inject", "replace")
        if inject not in INJECT_MODES:
            raise ValueError(
                f"{where}: params.inject must be one of {INJECT_MODES}, not {inject!r}"
            )
        return cls(
            read_layer=max(layers) if layer is None else layer,
            write_layer=write,
            positions=positions,
            align_positions=bool(params.get("align_positions", True)),
            cached=params.get("mode") == "cached",
            read_layers=tuple(layers),
            inject=inject,
            all_layers=bool(params.get("read_all_layers", False)),
        )

    def check_depth(self, n_blocks: int) -> None:
        """Refuse layers the model does not have (a decoder trained on a deeper model)."""
        deepest = max(*self.read_layers, self.write_block)
        if deepest >= n_blocks:
            raise ValueError(
                f"decoder reads or writes block {deepest}; the model has {n_blocks} blocks"
            )

    def describe(self) -> str:
        """One sentence for people: where the decoder reads and writes."""
        where = "every read position" if self.positions == "all" else f"positions {self.positions}"
        cache = " (from the bf16 activation cache)" if self.cached else ""
        blocks = ", ".join(map(str, self.read_layers))
        layers = (
            f"target block {self.read_layer}"
            if len(self.read_layers) == 1
            else f"target blocks {blocks} (all at once, one named group each)"
            if self.all_layers
            else f"target blocks {blocks} (one per example, named in its prompt)"
        )
        write = (
            "its own block at the same depth"
            if self.write_layer is None
            else f"the output of its own block {self.write_layer}"
        )
        how = "adds it to" if self.inject == "add" else "writes it at"
        return (
            f"The decoder reads the output of {layers} at {where}{cache} and {how} {write}"
            f"{' with the target’s position ids' if self.align_positions else ''}."
        )
