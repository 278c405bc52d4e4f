"""Which layers a metric is scored at, and its conditions run at each (the evaluate stage).

A metric is reported at the read layer chosen for its family on the validation split; with
``evaluate.layers: all`` at every read layer too. A decoder reading every layer at once is scored
under the key ``all``, and each layer alone with the others given the donor's activations.
"""

from __future__ import annotations

from pipeline.evaluation.conditions import CONDITIONS, READING, run_condition

ALL = "all"
"""The layer key of a decoder reading every layer at once, reading them all."""


def layer_keys(settings, chosen, scope: str) -> list[str]:
    """The keys of a metric's ``by_layer``. ``scope`` ``chosen``: only ``chosen``, the layer it
    is reported at; ``all``: each read layer too, and ``all`` first for a decoder reading every
    layer at once (each layer then alone holds the item's activations, the others the donor's)."""
    if scope == "chosen":
        return [str(chosen)]
    layers = [str(layer) for layer in settings.read_layers]
    return [ALL, *layers] if settings.all_layers else layers


def layer_runs(model, tokenizer, metric, reads, perm, settings, params, keys) -> dict:
    """(condition, layer key) -> rows: the reading conditions at each layer key of ``keys``,
    text-only once (key None)."""
    # Text-only needs a read only for the dialog's tokens: any of the metric's own layers has it.
    runs = {
        ("text_only", None): run_condition(
            model, tokenizer, metric, "text_only", reads[keys[0]], perm, settings, params
        )
    }
    for key in keys:
        if key == ALL:
            for cond in READING:
                runs[(cond, ALL)] = run_condition(
                    model, tokenizer, metric, cond, reads[ALL], perm, settings, params
                )
        elif settings.all_layers:
            # One layer alone of a decoder reading all at once (``ALL`` comes first in ``keys``).
            layer_reads = {layer: reads[str(layer)] for layer in settings.read_layers}
            runs[("shuffled", key)] = runs[("shuffled", ALL)]
            for cond in ("true", "untrained"):
                runs[(cond, key)] = run_condition(
                    model, tokenizer, metric, cond, None, perm, settings, params,
                    keep=int(key), layer_reads=layer_reads,
                )  # fmt: skip
        else:
            there = settings.with_layer(int(key))
            for cond in READING:
                runs[(cond, key)] = run_condition(
                    model, tokenizer, metric, cond, reads[key], perm, there, params
                )
    return runs


def reads_needed(settings, keys: set[str]) -> list[str]:
    """The layer keys whose reads the runs at ``keys`` use: a decoder reading every layer at once
    needs each layer's own reads too where one layer is scored alone."""
    if settings.all_layers and keys - {ALL}:
        keys = keys | {str(layer) for layer in settings.read_layers}
    return sorted(keys, key=lambda k: (k != ALL, k))


def by_cond(runs: dict, key: str) -> dict[str, list[dict]]:
    return {c: runs[(c, None if c == "text_only" else key)] for c in CONDITIONS}


def scored(runs: dict, key: str, score: str) -> dict[str, list[dict]]:
    """The rows of each condition at layer ``key`` with the ``score`` scorer's as ``score``."""
    return {c: [{**r, "score": r[score]} for r in rows] for c, rows in by_cond(runs, key).items()}
