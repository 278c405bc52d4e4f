"""The params of the control stage, importable without torch."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.core.choices import MixedDtype
from pipeline.core.stage import bounded


@dataclass
class ControlParams:
    """Decoder-guided steering of the target, with a mean-difference baseline."""

    target: str = "target-pirate"
    """The label of the control target in the QA file."""
    qa_file_override: str | None = None
    """QA pairs instead of the target's own: a YAML file like ``qa``, or read-command JSONL."""
    steps: int = bounded(12, minimum=1)
    """Optimizer steps of the steering adapter."""
    lr: float = bounded(2e-3, exclusiveMinimum=0)
    """Adam learning rate of the steering adapter."""
    lora_r: int = bounded(8, minimum=1)
    """Rank of the steering LoRA."""
    lora_alpha: int = 16
    """LoRA scaling numerator (scale = alpha / r)."""
    per_layer_loss: bool = False
    """Patch each steered block's output into the decoder in turn (block l learns from its own)."""
    n_prompts: int = bounded(16, minimum=1)
    """Prompts that train the adapter and the mean difference; the others are held out."""
    n_eval_prompts: int = bounded(8, minimum=0)
    """Held-out prompts scored and generated on (0: all the rest)."""
    max_new_tokens: int = bounded(32, minimum=1)
    """Greedy tokens generated per prompt and mode."""
    batch_size: int = bounded(4, minimum=1)
    """Prompts per steering step (each paired with one random QA pair), and per eval batch."""
    mean_diff_scale: float = 4.0
    """Multiplier of the mean-difference vector added at read_layer."""
    seed: int = 0
    """Seed of the steering adapter's init, the prompt split and the batch order."""
    dtype: MixedDtype = "float32"
    """``float32`` or ``bfloat16`` (bf16 autocast, adapters in fp32)."""
    device: str = "auto"
    """``auto`` (CUDA when available), ``cpu``, ``cuda``, ..."""
