"""The params of the activation cache stage, importable without torch.

Apart from the train stage's params, because a stage's key digests every module its code imports:
a change to how the decoder trains must not rerun the cache it reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.core.choices import Dtype
from pipeline.core.stage import bounded


@dataclass
class CacheParams:
    """What to cache and how."""

    layers: list[int] = field(default_factory=lambda: [15])
    """Blocks whose outputs are cached (``hidden_states[layer + 1]``)."""
    positions: str = "all"
    """Read positions kept per dialog: ``all`` or ``last:K``."""
    batch_size: int = bounded(8, minimum=1)
    """Dialogs per forward pass."""
    shard_tokens: int = bounded(65536, minimum=1)
    """Read tokens per shard; a shard closes at the first dialog that reaches it."""
    dtype: Dtype = "float32"
    """The model's compute dtype (the cache itself is always bfloat16)."""
    device: str = "auto"
    """``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:1``, ..."""
