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
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
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
    ):
        if per_device_batch_size < 1 or world_size < 1 or grad_accum < 1 or bucket_batches < 1:
            raise ValueError("batch size, world size, grad_accum and bucket_batches must be >= 1")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        self.lengths = [int(n) for n in lengths]
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
        # The last incomplete global batch of an epoch is dropped; the shuffle changes which.
        self.batches_per_epoch = len(self.lengths) // self.global_batch_size
        self.position = 0
        self._epoch_cache: tuple[int, list[list[int]]] | None = None

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """The global batches of one epoch, in the order they are consumed."""
        if self._epoch_cache is not None and self._epoch_cache[0] == epoch:
            return self._epoch_cache[1]
        rng = random.Random(f"{self.seed}:{epoch}")
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        order = order[: self.batches_per_epoch * self.global_batch_size]
        bucket = self.global_batch_size * self.bucket_batches
        batches = []
        for start in range(0, len(order), bucket):
            # A stable sort keeps the shuffled order among equal lengths.
            chunk = sorted(order[start : start + bucket], key=lambda i: self.lengths[i])
            batches += [
                chunk[i : i + self.global_batch_size]
                for i in range(0, len(chunk), self.global_batch_size)
            ]
        rng.shuffle(batches)
        self._epoch_cache = (epoch, batches)
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
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        mine = self.state_dict()
        for name in ("seed", "n_examples", "global_batch_size"):
            if state[name] != mine[name]:
                raise ValueError(
                    f"sampler state has {name}={state[name]}, this run has "
                    f"{mine[name]}: the checkpoint belongs to another configuration"
                )
        self.position = int(state["position"])
