"""The params of the control stage, importable without torch."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ControlParams:
    """Decoder-guided steering of the target, with a mean-difference baseline."""

    target: str = "target-pirate"
    """The label of the control target in the QA file."""
    qa_file_override: str | None = None
    """QA pairs instead of the target's own: a YAML file like ``qa``, or read-command JSONL."""
    steps: int = 12
    """Optimizer steps of the steering adapter."""
    lr: float = 2e-3
    """Adam learning rate of the steering adapter."""
    lora_r: int = 8
    """Rank of the steering LoRA."""
    lora_alpha: int = 16
    """LoRA scaling numerator (scale = alpha / r)."""
    per_layer_loss: bool = False
    """Patch each steered block's output into the decoder in turn (block l learns from its own)."""
    n_prompts: int = 16
    """Prompts that train the adapter and the mean difference; the others are held out."""
    n_eval_prompts: int = 8
    """Held-out prompts scored and generated on (0: all the rest)."""
    max_new_tokens: int = 32
    """Greedy tokens generated per prompt and mode."""
    batch_size: int = 4
    """Prompts per steering step (each paired with one random QA pair), and per eval batch."""
    mean_diff_scale: float = 4.0
    """Multiplier of the mean-difference vector added at read_layer."""
    seed: int = 0
    """Seed of the steering adapter's init, the prompt split and the batch order."""
    dtype: str = "float32"
    """``float32`` or ``bfloat16`` (bf16 autocast, adapters in fp32)."""
    device: str = "auto"
    """``auto`` (CUDA when available), ``cpu``, ``cuda``, ..."""

    def __post_init__(self):
        for name in ("steps", "lora_r", "n_prompts", "batch_size", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, not {getattr(self, name)}")
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype must be 'float32' or 'bfloat16', not {self.dtype!r}")
