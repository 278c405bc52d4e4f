"""Benchmarks: decoder training and activation caching, side by side with the reference design.

``python -m pipeline.bench.benchmark --model DIR`` (a prepared folder) or ``--config llama3-8b
--tokenizer DIR`` (random Llama-3-8B-shaped weights, bf16, CUDA) measures, on the same model and
the same batches, decoder-training tokens/s and peak memory of three designs:

- (a) the reference design: a separate frozen target model plus the decoder (base + LoRA), the
  target run on the fly every step with a full forward (as the LatentQA reference code does);
- (b) one shared copy: the target is the decoder's module with the adapter disabled, on the fly,
  stopped after the read layer (what ``pipeline.training.train`` does in ``on_the_fly`` mode);
- (c) one copy reading cached activations (bf16, precomputed here through the cache stage's read
  path and read back as ``ActivationCache.get`` does);

and activation-caching tokens/s with the early stop (at ``--caching-layer``, default the read
layer) versus a full forward. Every (design, repeat) runs in a fresh subprocess, interleaved, so its
peak memory belongs to one design. The memory targets use peak tensor memory:
``torch.cuda.max_memory_allocated`` on CUDA and, on CPU, the tensors live before one profiled step
plus the most that step allocates at once (the profiler's allocator events). On CPU the peak RSS
(``ru_maxrss``, which also counts libraries and allocator slack) is reported beside it.
``--scaling`` adds how caching time, cache size and training time grow with the number of examples
and of read layers. Tokens/s counts the decoder's own (unpadded) tokens, the same work in every
design, so its ratios are ratios of step times. Nothing here needs polars or snakemake.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch

from pipeline.bench.figures import DESIGNS, format_report, summarize
from pipeline.bench.worker import worker_main
from pipeline.bench.workload import CONFIGS, BenchSpec

# --- the parent --------------------------------------------------------------------------------


def worker_env(live_memory: bool) -> dict[str, str]:
    """The workers' environment; with ``live_memory``, glibc's malloc with a fixed mmap threshold.

    By default glibc raises the threshold after each large free, so later large buffers come from
    the heap and stay resident after they are freed: peak RSS then also measures the allocator
    (about 1.1 GiB more for SmolLM2 at batch 8). A fixed threshold returns freed buffers to the
    system, at the price of a page-faulting mmap per large buffer (tokens/s falls by about 45%
    on this CPU), so it is an option. Other C libraries ignore the variable; an explicit setting
    is kept.
    """
    if not live_memory:
        return dict(os.environ)
    return {"MALLOC_MMAP_THRESHOLD_": "65536", **os.environ}


def run_task(task: dict, workdir: Path) -> dict:
    """Run one task in a fresh Python process and return what it wrote."""
    name = f"{task['kind']}_{task.get('design', '')}_{time.monotonic_ns()}"
    task_path, result_path = workdir / f"{name}.task.json", workdir / f"{name}.result.json"
    task_path.write_text(json.dumps(task))
    command = [
        sys.executable,
        "-m",
        "pipeline.bench.benchmark",
        "--worker",
        str(task_path),
        "--result",
        str(result_path),
    ]
    proc = subprocess.run(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=worker_env(task["spec"].get("live_memory", False)),
    )
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark worker {name} failed:\n{proc.stderr[-4000:]}")
    return json.loads(result_path.read_text())


def benchmark(
    spec: BenchSpec,
    repeats: int = 3,
    designs: str = "abc",
    scaling: bool = False,
    batch_search: bool = False,
    workdir: Path | None = None,
) -> dict:
    """The whole benchmark: per repeat the caching worker, then (a), (b), (c), each fresh."""
    if repeats < 1 or not designs or set(designs) - set(DESIGNS):
        raise ValueError(f"repeats must be >= 1 and designs a subset of {''.join(DESIGNS)}")
    from tqdm import tqdm

    own = workdir is None
    folder = Path(tempfile.mkdtemp(prefix="latentqa-bench-")) if own else Path(workdir)
    folder.mkdir(parents=True, exist_ok=True)
    cache = folder / "cache.safetensors"
    if cache.exists():
        cache.unlink()
    base = {"spec": asdict(spec), "cache": str(cache), "workdir": str(folder)}
    runs: dict[str, list[dict]] = {d: [] for d in designs}
    caching = []
    bar = tqdm(total=repeats * (1 + len(designs)), desc="benchmark", file=sys.stderr)
    for _ in range(repeats):
        caching.append(run_task({**base, "kind": "caching"}, folder))
        bar.update(1)
        for design in designs:
            runs[design].append(run_task({**base, "kind": "design", "design": design}, folder))
            bar.update(1)
    bar.close()
    result = {
        "model": spec.model or spec.config,
        "device": spec.device,
        "environment": caching[0].get("environment"),
        "repeats": repeats,
        "read_layer": caching[0]["read_layer"],
        "caching_layer": caching[0]["caching_layer"],
        "n_layers": caching[0]["n_layers"],
        "spec": asdict(spec),
        "cache_bytes": caching[0].get("cache_bytes"),
        "runs": runs,
        "caching_runs": caching,
        "summary": summarize(runs, caching),
    }
    if batch_search:
        result["largest_batch"] = [
            run_task({**base, "kind": "largest_batch", "design": d}, folder) for d in designs
        ]
    if scaling:
        result["scaling"] = run_task({**base, "kind": "scaling"}, folder)["rows"]
    if own:
        for path in folder.iterdir():
            path.unlink()
        folder.rmdir()
    return result


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.bench.benchmark",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--model", help="a prepared model folder")
    which.add_argument("--config", choices=sorted(CONFIGS), help="random weights of this shape")
    parser.add_argument("--config-overrides", default="{}", help="JSON fields for --config")
    parser.add_argument("--tokenizer", help="tokenizer folder (needed with --config)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    parser.add_argument("--dtype", default=None, help="default float32 (--model), bf16 (--config)")
    parser.add_argument("--read-layer", type=int, default=None)
    parser.add_argument("--write-layer", type=int, default=0)
    parser.add_argument(
        "--caching-layer", type=int, default=None, help="early stop of the timed caching pass"
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--cache-batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=6, help="timed training steps per repeat")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--lora-dropout", type=float, default=0.0, help="the train stage's: 0")
    parser.add_argument(
        "--lora-blocks", choices=("all", "from_write"), default="all", help="as train.lora_blocks"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reference-target", choices=("full", "early"), default="full")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--designs", default="abc", help="which of a, b, c to run")
    parser.add_argument("--scaling", action="store_true", help="add the scaling table")
    parser.add_argument(
        "--batch-search",
        choices=("auto", "on", "off"),
        default="auto",
        help="largest batch per design (auto: on CUDA only)",
    )
    parser.add_argument("--max-batch", type=int, default=1024)
    parser.add_argument(
        "--live-memory",
        action="store_true",
        help="fix glibc's mmap threshold so peak RSS tracks live memory (slower steps)",
    )
    parser.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="recompute decoder blocks in the backward pass (all designs)",
    )
    parser.add_argument("--json", type=Path, default=Path("results/benchmark.json"))
    parser.add_argument("--workdir", type=Path, default=None, help="keep worker files here")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = _parse(argv)
    if args.worker:
        worker_main(args.worker, args.result)
        return 0
    if not (args.model or args.config):
        raise SystemExit("benchmark: give --model DIR or --config NAME")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    spec = BenchSpec(
        model=str(Path(args.model).resolve()) if args.model else None,
        config=args.config,
        config_overrides=json.loads(args.config_overrides),
        tokenizer=str(Path(args.tokenizer).resolve()) if args.tokenizer else None,
        device=device,
        dtype=args.dtype or ("bfloat16" if args.config else "float32"),
        read_layer=args.read_layer,
        write_layer=args.write_layer,
        caching_layer=args.caching_layer,
        batch_size=args.batch_size,
        cache_batch_size=args.cache_batch_size,
        steps=args.steps,
        warmup=args.warmup,
        examples=args.examples,
        lora_r=args.lora_r,
        lora_dropout=args.lora_dropout,
        lora_blocks=args.lora_blocks,
        seed=args.seed,
        reference_target=args.reference_target,
        max_batch=args.max_batch,
        gradient_checkpointing=args.gradient_checkpointing,
        live_memory=args.live_memory,
    )
    search = args.batch_search == "on" or (args.batch_search == "auto" and device == "cuda")
    result = benchmark(spec, args.repeats, args.designs, args.scaling, search, args.workdir)
    result["command"] = "python -m pipeline.bench.benchmark " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    print(format_report(result))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nfigures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
