"""The train stage's examples: one per (dialog, QA pair), each read at one of the decoder's read
layers, and batches of them with the read activations loaded from the cache or computed by the
target on the fly."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core import store
from pipeline.core.stats import derangement
from pipeline.mechanism.decoder_prompt import DecoderExample, ReadAt, build_decoder_example
from pipeline.mechanism.dialogs import TokenizedRead, tokenize_read_dialog


@dataclass
class Example:
    dialog: int
    """Index of the read dialog in its ExampleSet."""
    decoder: DecoderExample
    n_answer: int
    """Labelled tokens the loss counts (labels after the first position)."""
    length: int
    """Tokens this example costs (decoder prompt, plus the target's dialog on the fly)."""
    layer: int = 0
    """The target block it reads."""
    family: str = ""
    """Its data source family (``template``, ``relation_qa``, ...: see :func:`source_family`)."""
    question: str = ""


@dataclass
class ExampleSet:
    examples: list[Example]
    dialog_ids: list[str]
    reads: list[TokenizedRead | None]
    """The target's tokens per dialog (on the fly); None with a cache."""
    cache: Any = None


def read_dialogs_input(path: Path) -> list[dict]:
    """The dialogs of a data artifact (its ``dialogs.parquet``) or of a Parquet file."""
    from pipeline.data.schema import read_dialogs

    path = Path(path)
    return read_dialogs(path / "dialogs.parquet" if path.is_dir() else path)


def _open_cache(cache_dir: Path | None, params) -> Any:
    if cache_dir is None:
        raise ValueError("mode 'cached' needs an input named 'cache' (an activation cache)")
    from pipeline.training.activation_cache import ActivationCache

    cache = ActivationCache(Path(cache_dir))
    missing = sorted(set(params.read_layers) - set(cache.layers()))
    if missing:
        raise ValueError(
            f"{cache_dir}: read_layers {missing} are not cached (layers {cache.layers()})"
        )
    try:
        cached = store.read_manifest(cache_dir, verify="none").get("params", {}).get("positions")
    except store.StoreError:
        cached = None
    if cached is not None and cached != params.positions:
        raise ValueError(
            f"{cache_dir}: the cache read positions {cached!r}, "
            f"training asks for {params.positions!r}"
        )
    return cache


ALL_LAYERS = -1
"""``Example.layer`` of an example that reads every read layer at once."""


def read_at(params, layer: int) -> ReadAt | list[ReadAt]:
    """Where an example read at target block ``layer`` is written, and whether it is named
    (every read layer's, for :data:`ALL_LAYERS`)."""
    if layer == ALL_LAYERS:
        return [read_at(params, each) for each in params.read_layers]
    return ReadAt(layer, params.write_block(layer), named=len(params.read_layers) > 1)


def example_layers(params, layer: int) -> list[int]:
    """The target blocks an example at ``layer`` reads, in the order of its placeholders."""
    return list(params.read_layers) if layer == ALL_LAYERS else [layer]


def assign_layers(
    families: list[str], layers_of: Callable[[str], list[int]], seed: int
) -> list[int]:
    """One read layer per example: within each family, as many at each of its layers
    (``layers_of(family)``) as can be (seeded).

    Balanced per family, so that no kind of question is read mostly at one depth.
    """
    out = [0] * len(families)
    rng = random.Random(seed)
    by_family: dict[str, list[int]] = {}
    for i, family in enumerate(families):
        by_family.setdefault(family, []).append(i)
    for family in sorted(by_family):
        members, layers = by_family[family], layers_of(family)
        cycle = [layers[j % len(layers)] for j in range(len(members))]
        rng.shuffle(cycle)
        for i, layer in zip(members, cycle, strict=True):
            out[i] = layer
    return out


class _Builder:
    """Decoder examples of one split's dialogs (their reads, positions and tokens)."""

    def __init__(self, rows, tokenizer, params, cache, split: str):
        self.rows, self.tokenizer, self.params = rows, tokenizer, params
        cached_ids = set(cache.ids()) if cache is not None else set()
        self.ids, self.reads, self.positions = [], [], []
        for row in rows:
            if cache is not None:
                if row["id"] not in cached_ids:
                    raise ValueError(f"dialog {row['id']} ({split}) is not in the cache")
                read, read_positions = None, cache.read_positions(row["id"])
            else:
                read = tokenize_read_dialog(
                    tokenizer, row["messages"], row["n_masked_turns"], params.positions
                )
                read_positions = read.read_positions
            self.ids.append(row["id"])
            self.reads.append(read)
            self.positions.append(read_positions)
        self.cache = cache

    def example(
        self, dialog: int, qa: dict, layer: int, family: str, follow_ups: Sequence[dict] = ()
    ) -> Example:
        ex = build_decoder_example(
            self.tokenizer,
            self.positions[dialog],
            qa["question"],
            qa["answer"],
            self.params.align_positions,
            read_at(self.params, layer),
            [(f["question"], f["answer"]) for f in follow_ups],
        )
        n_answer = sum(label != -100 for label in ex.labels[1:])
        read = self.reads[dialog]
        cost = len(ex.input_ids) + (len(read.input_ids) if read is not None else 0)
        return Example(dialog, ex, n_answer, cost, layer, family, qa["question"])

    def family(self, dialog: int) -> str:
        return source_family(self.rows[dialog]["source"])

    def pairs(self) -> list[tuple[int, dict]]:
        return [(d, qa) for d, row in enumerate(self.rows) for qa in row["qa"]]

    def grouped(self, per_example: int, seed: int) -> list[tuple[int, dict, list[dict]]]:
        """(dialog, question, follow-up questions) of each example: a dialog's QA pairs in groups
        of ``per_example``, in a seeded order where there are several."""
        if per_example == 1:
            return [(d, qa, []) for d, qa in self.pairs()]
        rng, out = random.Random(seed), []
        for d, row in enumerate(self.rows):
            qa = list(row["qa"])
            rng.shuffle(qa)
            out += [(d, qa[i], qa[i + 1 : i + per_example]) for i in range(0, len(qa), per_example)]
        return out

    def set(self, examples: list[Example]) -> ExampleSet:
        return ExampleSet(examples, self.ids, self.reads, self.cache)


def build_examples(
    dialogs: list[dict], tokenizer, params, cache_dir: Path | None = None
) -> tuple[ExampleSet, ExampleSet, ExampleSet]:
    """Examples of (dialog, qa pair), each at one read layer (:func:`assign_layers`): split
    ``train`` (``params.questions_per_example`` QA pairs of one dialog per example, the examples
    mixed by source, ``params.mix``); a fixed sample of ``validation`` (one question each); and
    that sample again with each question put to another dialog's activations at the same layer (a
    derangement avoiding the dialog's own label), whose loss minus the true one is the grounding
    gap. The eval split is never read here: settings chosen by the held-out loss are chosen on
    validation labels."""
    cache = _open_cache(cache_dir, params) if params.mode == "cached" else None
    sets = {}
    for split in ("train", "validation"):
        build = _Builder(
            [d for d in dialogs if d["split"] == split], tokenizer, params, cache, split
        )
        per_example = params.questions_per_example if split == "train" else 1
        pairs = build.grouped(per_example, params.seed)
        if split == "train" and params.mix:
            sources = [row["source"] for row in build.rows]
            pairs = mix_pairs(pairs, sources, params.mix, params.seed)
        if split == "validation" and len(pairs) > params.eval_examples:
            chosen = random.Random(params.seed).sample(range(len(pairs)), params.eval_examples)
            pairs = [pairs[i] for i in sorted(chosen)]
        families = [build.family(d) for d, *_ in pairs]
        at = (
            [ALL_LAYERS] * len(pairs)
            if params.read_all_layers
            else assign_layers(families, params.layers_of, params.seed)
        )
        examples = [
            build.example(d, qa, layer, family, rest)
            for (d, qa, rest), layer, family in zip(pairs, at, families, strict=True)
        ]
        if split == "validation":  # neighbours of similar length pad little; item i pairs with i
            order = sorted(range(len(pairs)), key=lambda i: examples[i].length)
            examples = [examples[i] for i in order]
            donor = derangement([row["label"] for row in build.rows], params.seed)
            shuffled = [
                build.example(donor[pairs[i][0]], pairs[i][1], at[i], families[i]) for i in order
            ]
            sets["shuffled"] = build.set(shuffled)
        sets[split] = build.set(examples)
    if not sets["train"].examples:
        raise ValueError("the data has no examples in split 'train'")
    return sets["train"], sets["validation"], sets["shuffled"]


def layer_choice_examples(
    dialogs: list[dict], tokenizer, params, cache, per_family: int
) -> ExampleSet:
    """Up to ``per_family`` validation (dialog, QA pair) items of each data family, each at
    every read layer: the decoder's loss on them chooses a read layer per kind of question."""
    build = _Builder(
        [d for d in dialogs if d["split"] == "validation"], tokenizer, params, cache, "validation"
    )
    by_family: dict[str, list[tuple[int, dict]]] = {}
    for d, qa in build.pairs():
        by_family.setdefault(build.family(d), []).append((d, qa))
    rng = random.Random(params.seed)
    examples = []
    for family in sorted(by_family):
        pool = by_family[family]
        for d, qa in rng.sample(pool, min(per_family, len(pool))):
            examples += [build.example(d, qa, layer, family) for layer in params.read_layers]
    return build.set(examples)


def batch_units(data: ExampleSet, dialogs: list[dict], pair_families: list[str]) -> list[tuple]:
    """Per example of ``data``, the unit the sampler keeps in one batch: in ``pair_families``, its
    contrast pair (the family and the label its rows share; the k-th copy of each member, where
    ``mix`` repeats them, with the other's k-th), else the example alone."""
    labels = {row["id"]: row["label"] for row in dialogs}
    copies: Counter = Counter()
    units = []
    for i, ex in enumerate(data.examples):
        if ex.family not in pair_families:
            units.append(("", i))
            continue
        copies[ex.dialog, ex.question] += 1
        label = labels[data.dialog_ids[ex.dialog]]
        units.append((ex.family, label, ex.question, copies[ex.dialog, ex.question]))
    return units


def source_family(source: str) -> str:
    """``openai:gpt-4o-mini`` -> ``openai``: the name ``train.mix`` gives a data source."""
    return source.split(":", 1)[0]


def mix_pairs(pairs: list, sources: list[str], mix: dict[str, float], seed: int) -> list:
    """The train pairs (or examples of several pairs: ``questions_per_example``) resampled so that
    each source family makes up its share of ``mix``, counted in examples.

    The total stays the number of pairs; a family with fewer pairs than its share repeats them
    (each pair once before any twice), a larger one is subsampled, both seeded.
    """
    by_family: dict[str, list] = {}
    for pair in pairs:
        by_family.setdefault(source_family(sources[pair[0]]), []).append(pair)
    unknown = sorted(set(by_family) - set(mix))
    missing = sorted(set(mix) - set(by_family))
    if unknown or missing:
        raise ValueError(
            f"train.mix names the sources {sorted(mix)}; the training data has "
            f"{sorted(by_family)} (unnamed: {unknown}, absent: {missing})"
        )
    total, weight = len(pairs), sum(mix.values())
    rng = random.Random(seed)
    mixed = []
    for family in sorted(mix):
        pool, want = by_family[family], round(total * mix[family] / weight)
        repeats, rest = divmod(want, len(pool))
        mixed += pool * repeats + rng.sample(pool, rest)
    return mixed
