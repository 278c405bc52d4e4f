"""Which read layer serves which kind of question: chosen on the validation split, kept with the
adapter (``layer_choice.json``).

A decoder trained on several read layers reads some kinds of content better at one depth than at
another (in SmolLM2, entities mid-depth, a masked persona late). The train stage scores every
validation item of every data family at every layer and records, per family, the layer with the
lowest answer loss among those the family trained at. Evaluate reports each metric at the layer
of its family besides every layer; ``pipeline.read --read-layer auto`` reads a question at the
layer of the family whose validation questions it resembles most. Eval items never enter the
choice.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

FILE = "layer_choice.json"
SAMPLE_QUESTIONS = 24
"""Validation questions kept per family (what a new question is compared with)."""


@dataclass
class LayerChoice:
    """Per data family: the validation loss at each read layer and the layer chosen."""

    losses: dict[str, dict[int, float]] = field(default_factory=dict)
    """family -> read layer -> mean answer loss (nats/token) on its validation items."""
    counts: dict[str, int] = field(default_factory=dict)
    """family -> validation items scored (at every layer)."""
    questions: dict[str, list[str]] = field(default_factory=dict)
    """family -> some of its validation questions."""
    layers: list[int] = field(default_factory=list)
    """Every read layer the decoder was trained on."""
    trained: dict[str, list[int]] = field(default_factory=dict)
    """family -> the read layers its examples were trained at, where not all of ``layers``
    (``train.family_layers``): it is scored at every layer but chosen only among these."""
    recorded: dict[str, int] = field(default_factory=dict)
    """family -> layer as the train stage chose it (read back from the file, so that a near tie
    of the rounded losses cannot change the choice)."""

    def chosen(self, family: str) -> int:
        """The family's layer, or :meth:`default` for a family without validation items."""
        if family in self.recorded:
            return self.recorded[family]
        by_layer = self.losses.get(family)
        if not by_layer:
            return self.default()
        # A layer the family never trained at can score well by chance on a few items; the
        # decoder never learned to answer its questions there.
        allowed = self.trained.get(family, by_layer)
        return min(allowed, key=lambda layer: (by_layer[layer], layer))

    def for_families(self, families) -> tuple[int, str | None]:
        """(layer, family) of the first of ``families`` that has validation items, else
        (:meth:`default`, None)."""
        for family in families:
            if self.losses.get(family):
                return self.chosen(family), family
        return self.default(), None

    def default(self) -> int:
        """The layer with the lowest loss averaged over families (the deepest when unscored)."""
        if not self.losses:
            return max(self.layers)
        mean = {
            layer: sum(losses[layer] for losses in self.losses.values()) / len(self.losses)
            for layer in self.layers
        }
        return min(mean, key=lambda layer: (mean[layer], layer))

    def for_question(self, question: str) -> tuple[int, str | None]:
        """(layer, family) for a free question: the family whose validation questions share
        most words with it (None and :meth:`default` when none shares any)."""
        words = _words(question)
        best, family = 0.0, None
        for name, questions in sorted(self.questions.items()):
            for known in questions:
                shared = len(words & _words(known)) / max(len(words | _words(known)), 1)
                if shared > best:
                    best, family = shared, name
        return (self.chosen(family), family) if family else (self.default(), None)

    def to_json(self) -> dict:
        return {
            "layers": self.layers,
            "chosen": {family: self.chosen(family) for family in sorted(self.losses)},
            "default": self.default(),
            "losses": {
                family: {str(layer): round(loss, 5) for layer, loss in sorted(by_layer.items())}
                for family, by_layer in sorted(self.losses.items())
            },
            "counts": dict(sorted(self.counts.items())),
            "trained": {family: sorted(layers) for family, layers in sorted(self.trained.items())},
            "questions": {family: qs for family, qs in sorted(self.questions.items())},
        }

    @classmethod
    def from_json(cls, data: Mapping, where: str = FILE) -> LayerChoice:
        try:
            choice = cls(
                losses={
                    family: {int(layer): float(loss) for layer, loss in by_layer.items()}
                    for family, by_layer in data.get("losses", {}).items()
                },
                counts={k: int(v) for k, v in data.get("counts", {}).items()},
                questions={k: [str(q) for q in v] for k, v in data.get("questions", {}).items()},
                layers=[int(layer) for layer in data["layers"]],
                trained={
                    k: [int(layer) for layer in v] for k, v in data.get("trained", {}).items()
                },
                recorded={k: int(v) for k, v in data.get("chosen", {}).items()},
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"{where}: not a layer choice ({exc})") from None
        for family, by_layer in choice.losses.items():
            if sorted(by_layer) != sorted(choice.layers):
                raise ValueError(
                    f"{where}: family {family} lacks a loss for some of {choice.layers}"
                )
        bad = {
            f: layers
            for f, layers in choice.trained.items()
            if not layers or not set(layers) <= set(choice.layers)
        }
        if bad:
            raise ValueError(f"{where}: trained layers {bad} are not among {choice.layers}")
        bad = {f: layer for f, layer in choice.recorded.items() if layer not in choice.layers}
        if bad:
            raise ValueError(f"{where}: chosen layers {bad} are not among {choice.layers}")
        return choice


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


def write(choice: LayerChoice, adapter_dir: Path) -> None:
    (Path(adapter_dir) / FILE).write_text(json.dumps(choice.to_json(), indent=2) + "\n")


def read(adapter_dir: Path, layers: list[int]) -> LayerChoice:
    """The adapter's choice; a decoder of one layer (or one trained before the choice was kept)
    gets a choice that always answers its deepest layer."""
    path = Path(adapter_dir) / FILE
    if not path.is_file():
        return LayerChoice(layers=list(layers))
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: unreadable ({exc})") from None
    choice = LayerChoice.from_json(data, str(path))
    if sorted(choice.layers) != sorted(layers):
        raise ValueError(f"{path}: layers {choice.layers} differ from the decoder's {layers}")
    return choice
