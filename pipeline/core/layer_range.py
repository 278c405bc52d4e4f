"""The blocks an experiment names exist in its model: checked when the graph is built.

Beside the model's depth (``model_source.model_depth``) but not in that module: every stage that
prepares a model imports it, so a change there would change every artifact's key.
"""

from __future__ import annotations

from collections.abc import Iterable

from pipeline.core.errors import InputError


def check_layers(where: str, layers: Iterable[int], depth: int | None, model_name: str) -> None:
    """Refuse blocks the model does not have now, not after preparing it and making the data.

    ``depth``: the model's number of blocks, None when its config does not say (nothing checked).
    """
    for layer in layers:
        if depth is not None and not 0 <= layer < depth:
            raise InputError(
                f"{where} = {layer}, but the model {model_name} has {depth} blocks (0..{depth - 1})"
            )
