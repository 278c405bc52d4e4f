"""The train stage's recipe (``pipeline.training.train`` runs it on every process): the decoder
and its data set up, then optimizer steps, held-out evaluations and checkpoints until the last
step, then the adapter, its layer choice and the figures the manifest keeps."""

from __future__ import annotations

import os
import random
import signal
import sys
import time
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from pipeline.core.faults import fault_point
from pipeline.mechanism import layer_choice
from pipeline.mechanism.decoder import answer_loss
from pipeline.mechanism.lora import adapter_blocks, add_lora, enable_gradient_checkpointing
from pipeline.mechanism.modeling import decoder_layers, load_model
from pipeline.training import checkpoint_adapters, validation
from pipeline.training.batches import make_batch
from pipeline.training.checkpointing import TrainState
from pipeline.training.distributed import Dist, all_reduce_sum, barrier
from pipeline.training.optimizer import build_optimizer
from pipeline.training.parallel import autocast, clip_gradients, no_grad_sync, wrap_model
from pipeline.training.params import TrainParams
from pipeline.training.sampling import BucketedBatchSampler
from pipeline.training.train_data import (
    ExampleSet,
    batch_units,
    build_examples,
    read_dialogs_input,
)


class Interrupted(Exception):
    """SIGTERM arrived; a checkpoint was saved and the stage must not publish."""


class DecoderTraining:
    """This process's part of one training run, as a recipe: :meth:`setup` builds the model, the
    data, the optimizer and the resumable state (from the latest checkpoint, if any); :meth:`run`
    takes :meth:`train_step` until ``max_steps``, with :meth:`evaluate` and
    :meth:`save_checkpoint` when due, then writes the adapter and fills the :meth:`summary`."""

    def __init__(self, params: TrainParams, inputs: dict[str, Path], workdir: Path, ctx: Dist):
        self.params, self.inputs, self.workdir, self.ctx = params, inputs, Path(workdir), ctx
        self.rank0 = ctx.rank == 0
        self.fsdp = params.parallel == "fsdp"
        self.started = time.time()
        self.stop_requested = False
        self.wandb_run = None

    # Seeded once, the random generators are drawn from in the order of these steps: reordering
    # them changes the trained adapter.
    def setup(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: setattr(self, "stop_requested", True))
        random.seed(self.params.seed)
        torch.manual_seed(self.params.seed)
        barrier(self.ctx)  # rank 0 has made the staging folder
        self._setup_model_and_data()
        self._setup_adapter()
        self._setup_optimizer()
        self._setup_state()

    def _setup_model_and_data(self) -> None:
        params, load_device = self.params, "cpu" if self.fsdp else self.ctx.device
        self.model, self.tokenizer = load_model(self.inputs["model"], params.dtype, load_device)
        n_blocks = self.n_blocks = len(decoder_layers(self.model))
        blocks = {"read_layers": max(params.read_layers), "write_layer": params.write_layer or 0}
        for name, block in blocks.items():
            if not 0 <= block < n_blocks:
                raise ValueError(
                    f"{name} reaches block {block} but the model has {n_blocks} blocks"
                )
        self.dialogs = read_dialogs_input(self.inputs["data"])
        self.train_set, self.eval_set, self.shuffled_set = build_examples(
            self.dialogs, self.tokenizer, params, self.inputs.get("cache")
        )

    def _setup_adapter(self) -> None:
        params = self.params
        self.model = add_lora(
            self.model,
            params.lora_r,
            params.lora_alpha,
            params.lora_dropout,
            params.lora_targets,
            seed=params.seed,
            layers=adapter_blocks(params.lora_blocks, params.lowest_write_block, self.n_blocks),
        )
        if params.gradient_checkpointing:
            enable_gradient_checkpointing(self.model)
        self.model.train()
        self.train_model = wrap_model(self.model, params.parallel, self.ctx)

    def _setup_optimizer(self) -> None:
        params, ctx = self.params, self.ctx
        self.optimizer, self.scheduler = build_optimizer(self.model, params)
        examples = self.train_set.examples
        # The families whose training loss each step's record gives apart.
        self.families = sorted({ex.family for ex in examples})
        by_family = params.batching == "by_family"
        self.sampler = BucketedBatchSampler(
            [ex.length for ex in examples],
            params.per_device_batch_size,
            world_size=ctx.world_size,
            rank=ctx.rank,
            grad_accum=params.grad_accum,
            seed=params.seed,
            families=[ex.family for ex in examples] if by_family else None,
            units=batch_units(self.train_set, self.dialogs, params.pair_families)
            if by_family
            else None,
            run_length=params.family_run,
        )

    def _setup_state(self) -> None:
        ctx = self.ctx
        self.state = TrainState(
            self.workdir,
            self.model,
            self.optimizer,
            self.scheduler,
            self.sampler,
            ctx.rank,
            ctx.world_size,
            partial(barrier, ctx),
            self.fsdp,
        )
        self.resumed_from = self.state.resume()
        self.autocast = autocast(ctx, self.params.dtype)
        self.pad_id = self.tokenizer.pad_token_id
        # The optimizer's own parameters: under FSDP, module.parameters() may be unsharded views.
        self.trainable = [p for group in self.optimizer.param_groups for p in group["params"]]
        self.keep = self.trainable if self.fsdp else []

    def _batch(self, data: ExampleSet, indices: list[int]):
        """The decoder batch of ``data``'s examples ``indices``, and the target tokens it ran."""
        return make_batch(
            data, indices, self.model, self.pad_id, self.params, self.ctx, self.autocast, self.keep
        )

    def example_losses(self, data: ExampleSet) -> torch.Tensor:
        """(summed NLL, answer tokens) of every example of ``data``, on every rank."""
        return validation.example_losses(
            self.model, data, self._batch, self.autocast, self.params, self.ctx
        )

    def evaluate(self) -> dict[str, float | None]:
        """Held-out answer loss with the true activations and with shuffled ones."""
        return {
            "eval_loss": validation.mean_loss(self.example_losses, self.eval_set),
            "eval_loss_shuffled": validation.mean_loss(self.example_losses, self.shuffled_set),
        }

    def train_step(self, step: int) -> tuple[dict[str, Any], bool]:
        """The optimizer step after ``step`` steps: its metrics record, and whether a SIGTERM
        reached any process."""
        params, ctx = self.params, self.ctx
        tick = time.time()
        global_batch = self.sampler.global_batch(step)
        global_tokens = sum(self.train_set.examples[i].n_answer for i in global_batch)
        micro = self.sampler.micro_batches(step)
        n_families = len(self.families)
        # Summed loss, tokens run, target tokens run, a stop request; then per family the summed
        # loss and the answer tokens.
        totals = torch.zeros(4 + 2 * n_families, dtype=torch.float64, device=ctx.device)
        for a, indices in enumerate(micro):
            batch, target_tokens = self._batch(self.train_set, indices)
            with no_grad_sync(self.train_model, params.parallel, active=a < len(micro) - 1):
                with self.autocast():
                    nll, count = answer_loss(
                        self.train_model, batch, inject=params.inject, reduction="none"
                    )
                # Sum over answer tokens / answer tokens in the global batch; DDP and FSDP
                # average gradients over processes, hence the world size factor.
                (nll.sum() * (ctx.world_size / global_tokens)).backward()
            sums = [nll.detach().sum(), batch.attention_mask.sum(), target_tokens, 0.0]
            sums += [0.0] * (2 * n_families)
            for i, example_nll, example_count in zip(
                indices, nll.detach().tolist(), count.tolist(), strict=True
            ):
                f = self.families.index(self.train_set.examples[i].family)
                sums[4 + f] += example_nll
                sums[4 + n_families + f] += example_count
            totals += torch.tensor([float(x) for x in sums], dtype=torch.float64, device=ctx.device)
        grad_norm = clip_gradients(self.trainable, params.max_grad_norm)
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        step += 1
        self.sampler.position = step
        totals[3] = float(self.stop_requested)
        totals = all_reduce_sum(ctx, totals)
        seconds = time.time() - tick
        tokens = float(totals[1] + totals[2])
        self.state.tokens += tokens
        self.state.train_seconds += seconds
        record = {
            "step": step,
            "lr": lr,
            "loss": float(totals[0]) / global_tokens,
            "grad_norm": grad_norm,
            "tokens_per_s": tokens / seconds,
            "epoch": round(self.sampler.epoch, 4),
            # Each family's mean answer loss in this step (a family with no example left out).
            "loss_by_family": {
                family: float(totals[4 + f]) / float(totals[4 + n_families + f])
                for f, family in enumerate(self.families)
                if totals[4 + n_families + f] > 0
            },
        }
        if params.batching == "by_family":  # the step's loss is that family's
            record["family"] = self.train_set.examples[global_batch[0]].family
        return record, bool(totals[3] > 0)

    def save_checkpoint(self, step: int, interrupted: bool = False) -> None:
        """The adapter published along the way and the resumable checkpoint, where due."""
        params = self.params
        if checkpoint_adapters.due(step, params.adapter_every, params.max_steps):
            checkpoint_adapters.save(self.state, self.workdir, step)  # before the checkpoint
        # The last step too: a run killed between its end and publication resumes there.
        if interrupted or (
            params.checkpoint_every
            and (step % params.checkpoint_every == 0 or step == params.max_steps)
        ):
            self.state.save(step)

    def choose_layer(self) -> layer_choice.LayerChoice | None:
        """With several read layers (each example at one), the layer that serves each family."""
        if len(self.params.read_layers) < 2 or self.params.read_all_layers:
            return None
        return validation.choose_layers(
            self.dialogs, self.tokenizer, self.params, self.train_set.cache, self.example_losses
        )

    def summary(self, step: int, choice: layer_choice.LayerChoice | None) -> dict[str, Any]:
        """The figures the manifest keeps (rank 0: it reads the metrics log)."""
        final = self.state.read_metrics()
        train_losses = [m["loss"] for m in final if "loss" in m]
        evals = [m for m in final if m.get("eval_loss") is not None]
        return {
            "steps": step,
            "examples": {
                "train": len(self.train_set.examples),
                "validation": len(self.eval_set.examples),
            },
            "global_batch_size": self.sampler.global_batch_size,
            "world_size": self.ctx.world_size,
            "first_loss": train_losses[0] if train_losses else None,
            "final_loss": train_losses[-1] if train_losses else None,
            "eval_loss_start": evals[0]["eval_loss"] if evals else None,
            "eval_loss_final": evals[-1]["eval_loss"] if evals else None,
            "eval_loss_shuffled_final": evals[-1].get("eval_loss_shuffled") if evals else None,
            "tokens_per_s": self.state.tokens / max(self.state.train_seconds, 1e-9),
            "train_seconds": round(self.state.train_seconds, 2),
            "wall_seconds_this_run": round(time.time() - self.started, 2),
            "resumed_from_step": self.resumed_from,
            "layer_choice": choice.to_json()["chosen"] if choice else None,
        }

    def run(self, info: dict[str, Any]) -> None:
        """Train to ``max_steps`` (from the latest checkpoint); rank 0 fills ``info``."""
        self.setup()
        params, state = self.params, self.state
        if params.wandb and self.rank0:
            self.wandb_run = _init_wandb(params, self.workdir)
        step = state.step
        last_eval = self.evaluate() if step == 0 else state.last_eval
        if self.rank0 and step == 0:
            state.append_metrics({"step": 0, **last_eval}, self.wandb_run)
        bar = tqdm(
            total=params.max_steps,
            initial=step,
            desc="train",
            disable=not self.rank0,
            file=sys.stderr,
            dynamic_ncols=True,
            mininterval=1.0,
        )
        while step < params.max_steps:
            record, interrupted = self.train_step(step)
            step = record["step"]
            if step == params.max_steps or (params.eval_every and step % params.eval_every == 0):
                last_eval = self.evaluate()
                record.update(last_eval)
            state.last_eval = last_eval
            if self.rank0:
                state.append_metrics(record, self.wandb_run)
                bar.update(1)
                bar.set_postfix(loss=f"{record['loss']:.3f}", tok_s=f"{record['tokens_per_s']:.0f}")
            self.save_checkpoint(step, interrupted)
            if interrupted:
                bar.close()
                raise Interrupted(
                    f"SIGTERM: checkpoint saved at step {step} of {params.max_steps}; "
                    f"rerun the stage to resume"
                )
            fault_point(f"train.step.{step}", self.ctx.rank)
        bar.close()
        state.save_final_adapter(self.workdir / "adapter")
        choice = self.choose_layer()
        if self.rank0:
            if choice is not None:
                layer_choice.write(choice, self.workdir / "adapter")
            info.update(self.summary(step, choice))
            # The checkpoints stay until publication, which removes them (its ``scratch``): a
            # run killed before that resumes from the last one instead of training again.
            if self.wandb_run is not None:
                self.wandb_run.finish()
        barrier(self.ctx)


def _init_wandb(params: TrainParams, workdir: Path):
    os.environ.setdefault("WANDB_MODE", "offline")
    import wandb

    return wandb.init(project="latentqa", config=asdict(params), dir=str(workdir))
