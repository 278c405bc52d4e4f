"""Stage `train`: fit the decoder's LoRA adapter (docs/design.md §5.4), on one process or many.

Launched as ``torchrun --standalone --nproc_per_node N -m pipeline.training.train --out DIR
--key KEY --params JSON --input model=DIR --input data=DIR [--input cache=DIR]``, or as a plain
``python -m pipeline.training.train ...`` (one process, no process group). Inputs: ``model`` a
prepared model folder, ``data`` a filter artifact (``dialogs.parquet``) or a dialogs Parquet file,
and in ``cached`` mode ``cache`` an activation cache of the same data.

One base model is in memory: the decoder is the PEFT model, the target the same module inside
``disable_adapter()``. Each optimizer step consumes one global batch (see
``pipeline.training.sampling``); the loss is the mean NLL over every answer token of the global
batch, so the result does not depend on how the batch is split over processes and micro-steps.
Checkpoints land in the stage's staging folder, which survives a killed run, and a rerun resumes
from the latest complete one. Only rank 0 publishes the artifact: ``adapter/`` (PEFT format),
``metrics.jsonl``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
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

from pipeline.core import stage, store
from pipeline.core.faults import fault_point
from pipeline.core.lifeline import die_with_parent
from pipeline.mechanism import layer_choice
from pipeline.mechanism.decoder import DecoderBatch, answer_loss
from pipeline.mechanism.lora import (
    adapter_blocks,
    add_lora,
    enable_gradient_checkpointing,
    trainable_parameters,
)
from pipeline.mechanism.modeling import decoder_layers, load_model
from pipeline.training import checkpoint_adapters
from pipeline.training.checkpointing import TrainState
from pipeline.training.distributed import Dist, all_reduce_sum, barrier, init_distributed
from pipeline.training.params import TrainParams
from pipeline.training.sampling import BucketedBatchSampler
from pipeline.training.train_data import (
    ExampleSet,
    build_examples,
    layer_choice_examples,
    make_batch,
    read_dialogs_input,
)

log = logging.getLogger("pipeline.training.train")
INTERRUPTED_EXIT = 143  # 128 + SIGTERM: the scheduler must see that the stage did not finish


class Interrupted(Exception):
    """SIGTERM arrived; a checkpoint was saved and the stage must not publish."""


def lr_lambda(step: int, warmup: int, total: int) -> float:
    """Linear warmup to 1, then cosine decay to 0 at ``total`` (``step`` = steps already taken)."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _wrap(model, params: TrainParams, ctx: Dist):
    """DDP or FSDP around the PEFT model; returns the module the training forward goes through."""
    if ctx.world_size == 1 and params.parallel == "ddp":
        return model
    if params.parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)
    from torch.distributed.fsdp import fully_shard

    # Shard each block (all LoRA weights live in blocks); the small rest (embeddings, head) stays
    # replicated and frozen. Each block is then its own FSDP root.
    for block in decoder_layers(model):
        fully_shard(block)
    model.to(ctx.device)
    return model


@contextlib.contextmanager
def _no_grad_sync(train_model, params: TrainParams, active: bool):
    """Skip the gradient all-reduce on micro-steps that are not the last of a step."""
    if not active:
        yield
    elif params.parallel == "ddp" and hasattr(train_model, "no_sync"):
        with train_model.no_sync():
            yield
    elif params.parallel == "fsdp":
        blocks = decoder_layers(train_model)
        for block in blocks:
            block.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            for block in blocks:
                block.set_requires_gradient_sync(True)
    else:
        yield


def _init_wandb(params: TrainParams, workdir: Path):
    os.environ.setdefault("WANDB_MODE", "offline")
    import wandb

    return wandb.init(project="latentqa", config=asdict(params), dir=str(workdir))


def run(
    params: TrainParams, inputs: dict[str, Path], workdir: Path, info: dict[str, Any], ctx: Dist
) -> None:
    started = time.time()
    stop_requested = False

    def on_sigterm(_signum, _frame):
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGTERM, on_sigterm)
    random.seed(params.seed)
    torch.manual_seed(params.seed)
    barrier(ctx)  # rank 0 has made the staging folder
    rank0 = ctx.rank == 0
    fsdp = params.parallel == "fsdp"
    load_device = "cpu" if fsdp else ctx.device
    model, tokenizer = load_model(inputs["model"], params.dtype, load_device)
    n_blocks = len(decoder_layers(model))
    blocks = {"read_layers": max(params.read_layers), "write_layer": params.write_layer or 0}
    for name, block in blocks.items():
        if not 0 <= block < n_blocks:
            raise ValueError(f"{name} reaches block {block} but the model has {n_blocks} blocks")
    dialogs = read_dialogs_input(inputs["data"])
    train_set, eval_set, shuffled_set = build_examples(
        dialogs, tokenizer, params, inputs.get("cache")
    )
    model = add_lora(
        model,
        params.lora_r,
        params.lora_alpha,
        params.lora_dropout,
        params.lora_targets,
        seed=params.seed,
        layers=adapter_blocks(params.lora_blocks, params.lowest_write_block, n_blocks),
    )
    if params.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    model.train()
    train_model = _wrap(model, params, ctx)
    optimizer = torch.optim.AdamW(
        trainable_parameters(model), lr=params.lr, weight_decay=params.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, partial(lr_lambda, warmup=params.warmup_steps, total=params.max_steps)
    )
    sampler = BucketedBatchSampler(
        [ex.length for ex in train_set.examples],
        params.per_device_batch_size,
        world_size=ctx.world_size,
        rank=ctx.rank,
        grad_accum=params.grad_accum,
        seed=params.seed,
    )
    state = TrainState(
        workdir,
        model,
        optimizer,
        scheduler,
        sampler,
        ctx.rank,
        ctx.world_size,
        partial(barrier, ctx),
        fsdp,
    )
    resumed_from = state.resume()
    autocast = partial(
        torch.autocast,
        device_type=ctx.device.type,
        dtype=torch.bfloat16,
        enabled=params.dtype == "bfloat16",
    )
    pad_id = tokenizer.pad_token_id
    # The optimizer's own parameters: under FSDP, module.parameters() may be unsharded views.
    trainable = [p for group in optimizer.param_groups for p in group["params"]]
    keep = trainable if fsdp else []

    def example_losses(data: ExampleSet) -> torch.Tensor:
        """(summed NLL, answer tokens) of every example of ``data``, on every rank."""
        model.eval()
        chunk = params.per_device_batch_size * ctx.world_size
        totals = torch.zeros(len(data.examples), 2, dtype=torch.float64, device=ctx.device)
        with torch.no_grad():
            for start in range(0, len(data.examples), chunk):
                indices = list(range(start, min(start + chunk, len(data.examples))))
                mine = indices[ctx.rank :: ctx.world_size]
                # Every rank runs the same number of forwards (FSDP needs it): a rank without
                # examples in this chunk runs one and discards it.
                batch, _ = make_batch(
                    data, mine or indices[:1], model, pad_id, params, ctx, autocast, keep
                )
                with autocast():
                    nll, count = _answer_loss(model, batch, params.inject)
                if mine:
                    totals[mine] = torch.stack([nll.double(), count.double()], dim=1)
        model.train()
        return all_reduce_sum(ctx, totals)

    def mean_loss(data: ExampleSet) -> float | None:
        if not data.examples:
            return None
        totals = example_losses(data).sum(dim=0)
        return float(totals[0] / totals[1])

    def held_out() -> dict[str, float | None]:
        """Held-out answer loss with the true activations and with shuffled ones."""
        return {"eval_loss": mean_loss(eval_set), "eval_loss_shuffled": mean_loss(shuffled_set)}

    wandb_run = _init_wandb(params, workdir) if params.wandb and rank0 else None
    step = state.step
    last_eval = held_out() if step == 0 else state.last_eval
    if rank0 and step == 0:
        state.append_metrics({"step": 0, **last_eval}, wandb_run)
    bar = tqdm(
        total=params.max_steps,
        initial=step,
        desc="train",
        disable=not rank0,
        file=sys.stderr,
        dynamic_ncols=True,
        mininterval=1.0,
    )
    while step < params.max_steps:
        tick = time.time()
        global_batch = sampler.global_batch(step)
        global_tokens = sum(train_set.examples[i].n_answer for i in global_batch)
        micro = sampler.micro_batches(step)
        totals = torch.zeros(4, dtype=torch.float64, device=ctx.device)
        for a, indices in enumerate(micro):
            batch, target_tokens = make_batch(
                train_set, indices, model, pad_id, params, ctx, autocast, keep
            )
            with _no_grad_sync(train_model, params, active=a < len(micro) - 1):
                with autocast():
                    nll, count = _answer_loss(train_model, batch, params.inject)
                # Sum over answer tokens / answer tokens in the global batch; DDP and FSDP
                # average gradients over processes, hence the world size factor.
                (nll.sum() * (ctx.world_size / global_tokens)).backward()
            totals += torch.tensor(
                [
                    float(nll.detach().sum()),
                    float(batch.attention_mask.sum()),
                    float(target_tokens),
                    0.0,
                ],
                dtype=torch.float64,
                device=ctx.device,
            )
        grad_norm = _clip(trainable, params.max_grad_norm)
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        sampler.position = step
        totals[3] = float(stop_requested)
        totals = all_reduce_sum(ctx, totals)
        seconds = time.time() - tick
        tokens = float(totals[1] + totals[2])
        state.tokens += tokens
        state.train_seconds += seconds
        record = {
            "step": step,
            "lr": lr,
            "loss": float(totals[0]) / global_tokens,
            "grad_norm": grad_norm,
            "tokens_per_s": tokens / seconds,
            "epoch": round(sampler.epoch, 4),
        }
        if step == params.max_steps or (params.eval_every and step % params.eval_every == 0):
            last_eval = held_out()
            record.update(last_eval)
        state.last_eval = last_eval
        if rank0:
            state.append_metrics(record, wandb_run)
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.3f}", tok_s=f"{tokens / seconds:.0f}")
        interrupted = bool(totals[3] > 0)
        if checkpoint_adapters.due(step, params.adapter_every, params.max_steps):
            checkpoint_adapters.save(state, workdir, step)  # before the checkpoint of this step
        # The last step too: a run killed between its end and publication resumes there.
        if interrupted or (
            params.checkpoint_every
            and (step % params.checkpoint_every == 0 or step == params.max_steps)
        ):
            state.save(step)
        if interrupted:
            bar.close()
            raise Interrupted(
                f"SIGTERM: checkpoint saved at step {step} of {params.max_steps}; "
                f"rerun the stage to resume"
            )
        fault_point(f"train.step.{step}", ctx.rank)
    bar.close()
    state.save_final_adapter(workdir / "adapter")
    choice = None
    if len(params.read_layers) > 1 and not params.read_all_layers:
        choice_set = layer_choice_examples(
            dialogs, tokenizer, params, train_set.cache, params.layer_choice_examples
        )
        choice = _layer_choice(choice_set, example_losses(choice_set), params.read_layers)
        if rank0:
            layer_choice.write(choice, workdir / "adapter")
    if rank0:
        final = state.read_metrics()
        train_losses = [m["loss"] for m in final if "loss" in m]
        evals = [m for m in final if m.get("eval_loss") is not None]
        info.update(
            {
                "steps": step,
                "examples": {
                    "train": len(train_set.examples),
                    "validation": len(eval_set.examples),
                },
                "global_batch_size": sampler.global_batch_size,
                "world_size": ctx.world_size,
                "first_loss": train_losses[0] if train_losses else None,
                "final_loss": train_losses[-1] if train_losses else None,
                "eval_loss_start": evals[0]["eval_loss"] if evals else None,
                "eval_loss_final": evals[-1]["eval_loss"] if evals else None,
                "eval_loss_shuffled_final": evals[-1].get("eval_loss_shuffled") if evals else None,
                "tokens_per_s": state.tokens / max(state.train_seconds, 1e-9),
                "train_seconds": round(state.train_seconds, 2),
                "wall_seconds_this_run": round(time.time() - started, 2),
                "resumed_from_step": resumed_from,
                "layer_choice": choice.to_json()["chosen"] if choice else None,
            }
        )
        # The checkpoints stay until publication, which removes them (its ``scratch``): a run
        # killed before that resumes from the last one instead of training again.
        if wandb_run is not None:
            wandb_run.finish()
    barrier(ctx)


def _answer_loss(model, batch: DecoderBatch, inject: str):
    return answer_loss(model, batch, inject=inject, reduction="none")


def _layer_choice(data: ExampleSet, losses: torch.Tensor, layers) -> layer_choice.LayerChoice:
    """Per family and layer, the mean loss per answer token of its validation examples."""
    sums: dict[str, dict[int, list[float]]] = {}
    questions: dict[str, list[str]] = {}
    for example, (nll, count) in zip(data.examples, losses.tolist(), strict=True):
        slot = sums.setdefault(example.family, {}).setdefault(example.layer, [0.0, 0.0])
        slot[0] += nll
        slot[1] += count
    for example in data.examples:
        asked = questions.setdefault(example.family, [])
        question = example.question
        if question not in asked and len(asked) < layer_choice.SAMPLE_QUESTIONS:
            asked.append(question)
    return layer_choice.LayerChoice(
        losses={
            family: {layer: nll / max(count, 1) for layer, (nll, count) in by_layer.items()}
            for family, by_layer in sums.items()
        },
        counts={
            family: sum(1 for ex in data.examples if ex.family == family) // len(layers)
            for family in sums
        },
        questions=questions,
        layers=list(layers),
    )


def _clip(parameters, max_norm: float) -> float | None:
    if not max_norm:
        return None
    norm = torch.nn.utils.clip_grad_norm_(parameters, max_norm)
    if hasattr(norm, "full_tensor"):  # a DTensor under FSDP
        norm = norm.full_tensor()
    return float(norm)


def _parse_args(argv: list[str]) -> tuple[TrainParams, dict[str, Path], Path]:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m pipeline.training.train", add_help=False)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--params", default="{}")
    parser.add_argument("--input", action="append", default=[])
    args, _ = parser.parse_known_args(argv)
    params = stage.build_params(TrainParams, json.loads(args.params), where="train params")
    inputs = {}
    for pair in args.input:
        name, _, path = pair.partition("=")
        inputs[name] = Path(path)
    return params, inputs, args.out


def main(argv: list[str] | None = None) -> int:
    """Every process trains; rank 0 alone publishes, through ``stage.main``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    params, inputs, out = _parse_args(argv)
    # torchrun starts workers in sessions of their own: without this, killing the job's process
    # group would leave them running and writing into the staging folder.
    die_with_parent()
    ctx = init_distributed(params.device)
    code = 0
    try:
        if ctx.rank == 0:
            stage.main(
                "train",
                TrainParams,
                partial(run, ctx=ctx),
                argv,
                resumable=("checkpoints", "metrics.jsonl", checkpoint_adapters.FOLDER),
                scratch=("checkpoints",),
            )
        else:
            logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
            if store.follows_holder(out):  # False: another run published it; rank 0 reuses it
                run(params, inputs, store.staging_dir(out), {}, ctx)
    except Interrupted as exc:
        log.warning("rank %d: %s", ctx.rank, exc)
        print(f"train: {exc}", file=sys.stderr)
        code = INTERRUPTED_EXIT
    finally:
        ctx.close()
    return code


if __name__ == "__main__":
    sys.exit(main())
