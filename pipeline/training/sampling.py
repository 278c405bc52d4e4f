"""Length-bucketed, distributed-aware batches with a resumable position.

One optimizer step consumes one *global batch* of ``per_device_batch_size * world_size *
grad_accum`` examples. Each epoch the examples are shuffled with a seeded RNG, cut into buckets of
a few global batches, sorted by length inside each bucket (so a micro-batch pads little), cut into
global batches, and the global batches are shuffled again. A global batch is split into
``world_size * grad_accum`` micro-batches of neighbouring lengths; micro-step ``a`` of rank ``r``
takes micro-batch ``a * world_size + r``. The order depends only on the seed, the lengths and the
global batch size, so a run on one process with ``grad_accum * world_size`` micro-steps sees the
same examples per optimizer step as a run on ``world_size`` processes, and the position (the
number of global batches consumed) is all a checkpoint needs to resume.

Given each example's family, every global batch holds one family only (``by_family``): the same
examples per epoch, but a family's optimizer step is its own rather than a share of every step's
mean, and each family takes steps in proportion to its examples, spread evenly over the epoch,
alone or in runs of ``run_length`` consecutive steps (Adam's momentum averages the gradients of
about ten steps: a run keeps it on one family). Examples that share a ``unit``
(a contrast pair: the true and false statement of one fact) are kept next to each other, so that
they land in one batch wherever the batch size allows.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Hashable, Iterator, Sequence
from typing import Any


class BucketedBatchSampler:
    """An endless stream of this rank's micro-batches (lists of example indices) per step."""

    def __init__(
        self,
        lengths: Sequence[int],
        per_device_batch_size: int,
        world_size: int = 1,
        rank: int = 0,
        grad_accum: int = 1,
        seed: int = 0,
        bucket_batches: int = 8,
        families: Sequence[str] | None = None,
        units: Sequence[Hashable] | None = None,
        run_length: int = 1,
    ):
        if per_device_batch_size < 1 or world_size < 1 or grad_accum < 1 or bucket_batches < 1:
            raise ValueError("batch size, world size, grad_accum and bucket_batches must be >= 1")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        self.lengths = [int(n) for n in lengths]
        for name, values in (("families", families), ("units", units)):
            if values is not None and len(values) != len(self.lengths):
                raise ValueError(f"{len(values)} {name} for {len(self.lengths)} examples")
        if (units is not None or run_length != 1) and families is None:
            raise ValueError("units and runs are within a family: give families too")
        if run_length < 1:
            raise ValueError(f"run_length must be >= 1, not {run_length}")
        self.run_length = run_length
        self.families = list(families) if families is not None else None
        # Without units each example is its own.
        self.units = list(units) if units is not None else list(range(len(self.lengths)))
        self.per_device_batch_size = per_device_batch_size
        self.world_size = world_size
        self.rank = rank
        self.grad_accum = grad_accum
        self.seed = seed
        self.bucket_batches = bucket_batches
        self.global_batch_size = per_device_batch_size * world_size * grad_accum
        if len(self.lengths) < self.global_batch_size:
            raise ValueError(
                f"{len(self.lengths)} examples cannot fill one global batch of "
                f"{self.global_batch_size} (per-device batch x world size x "
                f"grad_accum)"
            )
        # The last incomplete global batch of an epoch (of each family's) is dropped; the shuffle
        # changes which.
        size = self.global_batch_size
        if self.families is None:
            self.batches_per_epoch = len(self.lengths) // size
        else:
            counts = Counter(self.families)
            self.batches_per_epoch = sum(n // size for n in counts.values())
            if not self.batches_per_epoch:
                raise ValueError(
                    f"no family has examples for one global batch of {size}: {dict(counts)}"
                )
        self.position = 0
        self._epoch_cache: tuple[int, list[list[int]]] | None = None

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """The global batches of one epoch, in the order they are consumed."""
        if self._epoch_cache is not None and self._epoch_cache[0] == epoch:
            return self._epoch_cache[1]
        rng = random.Random(f"{self.seed}:{epoch}")
        if self.families is None:
            order = list(range(len(self.lengths)))
            rng.shuffle(order)
            batches = self._bucketed(order[: self.batches_per_epoch * self.global_batch_size])
            rng.shuffle(batches)
        else:
            runs = []
            for family in sorted(set(self.families)):
                members = [i for i, f in enumerate(self.families) if f == family]
                family_batches = self._bucketed(self._unit_order(members, rng))
                rng.shuffle(family_batches)
                runs.append(
                    [
                        family_batches[i : i + self.run_length]
                        for i in range(0, len(family_batches), self.run_length)
                    ]
                )
            batches = [batch for run in spread(runs, rng) for batch in run]
        self._epoch_cache = (epoch, batches)
        return batches

    def _unit_order(self, members: list[int], rng: random.Random) -> list[int]:
        """``members`` shuffled by unit, each unit's examples together, cut to whole batches."""
        by_unit: dict[Hashable, list[int]] = {}
        for i in members:
            by_unit.setdefault(self.units[i], []).append(i)
        groups = list(by_unit.values())
        rng.shuffle(groups)
        order = [i for group in groups for i in group]
        return order[: len(order) // self.global_batch_size * self.global_batch_size]

    def _bucketed(self, order: list[int]) -> list[list[int]]:
        """``order`` (whole global batches) cut into buckets sorted by length, then into batches.

        A unit's examples sort by its longest member's length, so they stay together."""
        size, bucket = self.global_batch_size, self.global_batch_size * self.bucket_batches
        unit_length: dict[Hashable, int] = {}
        for i in order:
            unit_length[self.units[i]] = max(unit_length.get(self.units[i], 0), self.lengths[i])
        batches = []
        for start in range(0, len(order), bucket):
            # A stable sort keeps the shuffled order among equal lengths.
            chunk = sorted(order[start : start + bucket], key=lambda i: unit_length[self.units[i]])
            batches += [chunk[i : i + size] for i in range(0, len(chunk), size)]
        return batches

    def global_batch(self, position: int) -> list[int]:
        epoch, index = divmod(position, self.batches_per_epoch)
        return self.epoch_batches(epoch)[index]

    def micro_batches(self, position: int) -> list[list[int]]:
        """This rank's ``grad_accum`` micro-batches of the global batch at ``position``."""
        batch = self.global_batch(position)
        size = self.per_device_batch_size
        micro = [batch[i : i + size] for i in range(0, len(batch), size)]
        return [micro[a * self.world_size + self.rank] for a in range(self.grad_accum)]

    def __iter__(self) -> Iterator[list[list[int]]]:
        while True:
            batches = self.micro_batches(self.position)
            self.position += 1
            yield batches

    @property
    def epoch(self) -> float:
        return self.position / self.batches_per_epoch

    def state_dict(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "seed": self.seed,
            "n_examples": len(self.lengths),
            "global_batch_size": self.global_batch_size,
            "batches_per_epoch": self.batches_per_epoch,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        mine = self.state_dict()
        for name in ("seed", "n_examples", "global_batch_size", "batches_per_epoch"):
            # A checkpoint from before batches_per_epoch was recorded has none to compare.
            if name in state and state[name] != mine[name]:
                raise ValueError(
                    f"sampler state has {name}={state[name]}, this run has "
                    f"{mine[name]}: the checkpoint belongs to another configuration"
                )
        self.position = int(state["position"])


def spread(runs: list[list], rng: random.Random) -> list:
    """The runs of every family in one order where each family's runs are evenly spaced (the
    j-th of a family's n at (j + u) / n of the epoch, u drawn per family): any stretch of steps,
    such as the first part of an epoch that a run's max_steps reaches, holds each family's share."""
    keyed = []
    for family_runs in runs:
        offset = rng.random()
        keyed += [
            ((j + offset) / len(family_runs), rng.random(), run)
            for j, run in enumerate(family_runs)
        ]
    keyed.sort(key=lambda k: k[:2])
    return [run for *_, run in keyed]
