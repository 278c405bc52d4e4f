"""The adapter at chosen steps of a run, published beside the final one for the reading curve.

With ``train.adapter_every: N`` the train stage writes the PEFT adapter of every N-th optimizer
step (and of the last) to ``checkpoint_adapters/step_<n>/``: the LoRA weights only (a few MB on
a small model), not the optimizer state of the resumable checkpoints, which publication removes.
Each folder is written under a temporary name and renamed into place, before the checkpoint of
the same step: a run killed in between resumes from an earlier checkpoint and writes it again.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

FOLDER = "checkpoint_adapters"
"""The folder of the train artifact (and of its staging folder) that holds them."""
_NAME = re.compile(r"^step_(\d{6,})$")


def step_folder(step: int) -> str:
    return f"step_{step:06d}"


def due(step: int, every: int, max_steps: int) -> bool:
    """Whether the adapter of ``step`` is published (every ``every`` steps and the last one)."""
    return every > 0 and (step % every == 0 or step == max_steps)


def save(state, workdir: Path, step: int) -> Path:
    """Write the adapter of ``state``'s model at ``step``; every process calls it (FSDP gathers).

    ``state`` is the run's :class:`pipeline.training.checkpointing.TrainState`.
    """
    root = Path(workdir) / FOLDER
    final = root / step_folder(step)
    tmp = root / f".tmp-{step_folder(step)}"
    if state.rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
    state.barrier()
    state.save_final_adapter(tmp)
    if state.rank == 0:
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
    state.barrier()
    return final


def published(train_dir: Path) -> list[tuple[int, Path]]:
    """(step, adapter folder) of a train artifact's published adapters, by step."""
    root = Path(train_dir) / FOLDER
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _NAME.match(path.name)
        if match and (path / "adapter_config.json").is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)
