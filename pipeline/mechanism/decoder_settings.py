"""How a decoder reads: the settings every user of a trained decoder takes from its manifest.

Evaluate, control, the report and ``pipeline.read`` all build them with
:meth:`DecoderSettings.from_manifest`, the one place that turns a train artifact's params into
read and write layers, positions and the cache rounding.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.mechanism.dialogs import parse_positions


@dataclass(frozen=True)
class DecoderSettings:
    """How the decoder was trained to read (from the train artifact's manifest)."""

    read_layer: int
    """The target block whose output is read."""
    write_layer: int = 0
    """The decoder block whose output is replaced at the placeholders."""
    positions: str = "all"
    """Read positions: ``all`` or ``last:K``."""
    align_positions: bool = True
    """Placeholders carry the target's position ids."""
    cached: bool = False
    """Trained on bf16-cached activations: reads are rounded to bf16 the same way."""

    @classmethod
    def from_manifest(
        cls,
        manifest: Mapping[str, Any],
        overrides: Mapping[str, Any] | None = None,
        where: str = "the train manifest",
    ) -> DecoderSettings:
        """The settings in ``manifest['params']``, with ``overrides`` (e.g. command-line) on top."""
        params = {**manifest.get("params", {}), **(overrides or {})}
        if "read_layer" not in params:
            raise ValueError(f"{where} has no params.read_layer")
        for name in ("read_layer", "write_layer"):
            value = params.get(name, 0)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{where}: params.{name} must be a block index, not {value!r}")
        positions = str(params.get("positions", "all"))
        try:
            parse_positions(positions)
        except ValueError as exc:
            raise ValueError(f"{where}: params.positions: {exc}") from None
        return cls(
            read_layer=params["read_layer"],
            write_layer=params.get("write_layer", 0),
            positions=positions,
            align_positions=bool(params.get("align_positions", True)),
            cached=params.get("mode") == "cached",
        )

    def check_depth(self, n_blocks: int) -> None:
        """Refuse layers the model does not have (a decoder trained on a deeper model)."""
        for name in ("read_layer", "write_layer"):
            if getattr(self, name) >= n_blocks:
                raise ValueError(
                    f"decoder {name}={getattr(self, name)}; the model has {n_blocks} blocks"
                )

    def describe(self) -> str:
        """One sentence for people: where the decoder reads and writes."""
        where = "every read position" if self.positions == "all" else f"positions {self.positions}"
        cache = " (from the bf16 activation cache)" if self.cached else ""
        return (
            f"The decoder reads the output of target block {self.read_layer} at {where}{cache} "
            f"and writes it at the output of its own block {self.write_layer}"
            f"{' with the target’s position ids' if self.align_positions else ''}."
        )
