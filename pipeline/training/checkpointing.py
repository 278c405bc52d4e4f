"""Training checkpoints that survive being killed at any moment.

A checkpoint is a folder ``<root>/step-XXXXXX/`` written as ``<root>/.tmp-step-XXXXXX/`` and
renamed into place; it counts only once its ``complete`` marker (written last) exists. Tensors go
to safetensors and everything else to JSON (no pickle, so loading runs no code): nested state
such as an optimizer's ``state_dict`` goes through ``pipeline.training.state_files``.

Several processes may write one checkpoint: :func:`begin` (one process) makes the temporary folder,
every process writes its own files into it (``rank`` files), and :func:`commit` (one process,
after the others are done) writes the marker, renames and prunes old checkpoints.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from pipeline.mechanism.lora import save_adapter
from pipeline.training.state_files import load_state, save_state

COMPLETE = "complete"
_STEP_DIR = re.compile(r"^step-(\d{6,})$")


def step_name(step: int) -> str:
    return f"step-{step:06d}"


# --- RNG states -------------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))


# --- checkpoint folders -----------------------------------------------------------------------


def begin(root: Path, step: int) -> Path:
    """Create (afresh) the temporary folder that checkpoint ``step`` is written into."""
    tmp = Path(root) / f".tmp-{step_name(step)}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def temp_dir(root: Path, step: int) -> Path:
    return Path(root) / f".tmp-{step_name(step)}"


def commit(root: Path, step: int, keep: int = 2) -> Path:
    """Mark the temporary folder complete, rename it into place and keep the last ``keep``."""
    root = Path(root)
    tmp = temp_dir(root, step)
    marker = tmp / COMPLETE
    marker.write_text(json.dumps({"step": step}))
    with open(marker) as handle:  # the marker must reach the disk before the rename
        os.fsync(handle.fileno())
    final = root / step_name(step)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in complete_checkpoints(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def complete_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _STEP_DIR.match(path.name)
        if match and (path / COMPLETE).is_file():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def latest_checkpoint(root: Path) -> Path | None:
    found = complete_checkpoints(root)
    return found[-1] if found else None


def clean_temporaries(root: Path) -> None:
    """Remove half-written checkpoints left by a killed run."""
    root = Path(root)
    if root.is_dir():
        for path in root.glob(".tmp-step-*"):
            shutil.rmtree(path, ignore_errors=True)


# --- the training loop's resumable state ------------------------------------------------------


class TrainState:
    """Checkpoints of a training run under ``<workdir>/checkpoints``, and its metrics log.

    Saving and resuming are collective: every process calls them at the same step. The adapter and
    optimizer states are gathered in full (also under FSDP) and written by rank 0; each process
    writes its own RNG states.
    """

    def __init__(
        self,
        workdir: Path,
        model,
        optimizer,
        scheduler,
        sampler,
        rank: int = 0,
        world_size: int = 1,
        barrier=lambda: None,
        fsdp: bool = False,
        keep: int = 2,
    ):
        self.root = Path(workdir) / "checkpoints"
        self.metrics_path = Path(workdir) / "metrics.jsonl"
        self.model, self.optimizer, self.scheduler, self.sampler = (
            model,
            optimizer,
            scheduler,
            sampler,
        )
        self.rank, self.world_size, self.barrier = rank, world_size, barrier
        self.fsdp, self.keep = fsdp, keep
        self.step = 0
        self.tokens = 0.0
        self.train_seconds = 0.0
        self.last_eval: dict[str, float | None] | None = None

    def _options(self, loading: bool = False):
        from torch.distributed.checkpoint.state_dict import StateDictOptions

        if self.fsdp:
            return StateDictOptions(
                full_state_dict=True,
                cpu_offload=not loading,
                ignore_frozen_params=True,
                strict=False,
            )
        return StateDictOptions(ignore_frozen_params=True, strict=False)

    def _gather(self) -> tuple[dict[str, torch.Tensor], Any]:
        from torch.distributed.checkpoint.state_dict import (
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        adapter = get_model_state_dict(self.model, options=self._options())
        optim = get_optimizer_state_dict(self.model, self.optimizer, options=self._options())
        return {k: v.detach().cpu().contiguous() for k, v in adapter.items()}, optim

    def save(self, step: int) -> None:
        if self.rank == 0:
            begin(self.root, step)
        self.barrier()
        tmp = temp_dir(self.root, step)
        save_state(tmp, f"rng-rank{self.rank}", rng_state())
        adapter, optim = self._gather()
        if self.rank == 0:
            save_file(adapter, str(tmp / "adapter.safetensors"))
            save_state(tmp, "optimizer", optim)
            meta = {
                "step": step,
                "scheduler": self.scheduler.state_dict(),
                "sampler": self.sampler.state_dict(),
                "tokens": self.tokens,
                "train_seconds": self.train_seconds,
                "last_eval": self.last_eval,
                "world_size": self.world_size,
            }
            (tmp / "state.json").write_text(json.dumps(meta, indent=1))
        self.barrier()
        if self.rank == 0:
            commit(self.root, step, keep=self.keep)
        self.barrier()

    def resume(self) -> int | None:
        """Load the latest complete checkpoint, if any; return its step."""
        from torch.distributed.checkpoint.state_dict import (
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        if self.rank == 0:
            clean_temporaries(self.root)
        self.barrier()
        latest = latest_checkpoint(self.root)
        if latest is None:
            if self.rank == 0:
                self.metrics_path.unlink(missing_ok=True)  # from a run killed before a checkpoint
            return None
        meta = json.loads((latest / "state.json").read_text())
        set_model_state_dict(
            self.model,
            load_file(str(latest / "adapter.safetensors")),
            options=self._options(loading=True),
        )
        set_optimizer_state_dict(
            self.model,
            self.optimizer,
            load_state(latest, "optimizer"),
            options=self._options(loading=True),
        )
        self.scheduler.load_state_dict(meta["scheduler"])
        self.sampler.load_state_dict(meta["sampler"])
        self.step = int(meta["step"])
        self.tokens, self.train_seconds = meta["tokens"], meta["train_seconds"]
        self.last_eval = meta["last_eval"]
        rng_name = f"rng-rank{self.rank}"
        if (latest / f"{rng_name}.json").exists() and meta["world_size"] == self.world_size:
            set_rng_state(load_state(latest, rng_name))
        if self.rank == 0:
            kept = [m for m in self.read_metrics() if m["step"] <= self.step]
            self.metrics_path.write_text("".join(json.dumps(m) + "\n" for m in kept))
            print(f"train: resuming from {latest} (step {self.step})", file=sys.stderr)
        return self.step

    def save_final_adapter(self, path: Path) -> None:
        """The adapter in PEFT format (``save_pretrained``), loadable with ``PeftModel``."""
        adapter = None
        if self.fsdp:
            adapter, _ = self._gather()
        if self.rank == 0:
            save_adapter(self.model, path, state_dict=adapter)
        self.barrier()

    def append_metrics(self, record: dict[str, Any], wandb_run=None) -> None:
        with open(self.metrics_path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        if wandb_run is not None:
            wandb_run.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.exists():
            return []
        records = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut short by a kill
                continue
        return records
