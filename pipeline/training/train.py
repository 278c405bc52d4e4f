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
``metrics.jsonl``. Each process runs the recipe ``pipeline.training.recipe.DecoderTraining``;
this module is its command line, the one every stage shares (``pipeline.core.stage``).
"""

from __future__ import annotations

import logging
import sys
from functools import partial
from pathlib import Path
from typing import Any

from pipeline.core import stage, staging, store
from pipeline.core.errors import InputError
from pipeline.core.lifeline import die_with_parent
from pipeline.training import checkpoint_adapters
from pipeline.training.distributed import Dist, init_distributed
from pipeline.training.params import TrainParams
from pipeline.training.recipe import DecoderTraining, Interrupted

log = logging.getLogger("pipeline.training.train")
INTERRUPTED_EXIT = 143  # 128 + SIGTERM: the scheduler must see that the stage did not finish


def run(
    params: TrainParams, inputs: dict[str, Path], workdir: Path, info: dict[str, Any], ctx: Dist
) -> None:
    """The stage's work on this process (rank 0 then publishes ``workdir``)."""
    DecoderTraining(params, inputs, workdir, ctx).run(info)


def main(argv: list[str] | None = None) -> int:
    """Every process trains; rank 0 alone publishes, through ``stage.main``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = stage.parse_stage_args(argv, prog="python -m pipeline.training.train")
        params = stage.build_params(TrainParams, args.params, where="train params")
    except InputError as exc:
        raise SystemExit(f"train: error: {stage.one_line(exc)}") from None
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
            if staging.follows_holder(
                args.out
            ):  # False: another run published it; rank 0 reuses it
                run(params, args.inputs, store.staging_dir(args.out), {}, ctx)
    except Interrupted as exc:
        log.warning("rank %d: %s", ctx.rank, exc)
        print(f"train: {exc}", file=sys.stderr)
        code = INTERRUPTED_EXIT
    finally:
        ctx.close()
    return code


if __name__ == "__main__":
    sys.exit(main())
