"""Which block should a decoder read? ``python -m pipeline.analysis.layers --experiment NAME``.

Before training a decoder on a new model: for every block it prints the validation-split accuracy
of a logistic probe on the two probe tasks (the label a held-out dialog was produced under, the
true member of a contrast pair) and the logit lens's median rank of the relation answers, then
suggests the block where the label probe (the decoder's own task) is best, smoothed over
neighbouring blocks. It reads only artifacts that need no decoder (the layer caches and the lens),
builds them with ``--build`` (Snakemake) or names the command that does, and fits nothing on the
eval split.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

from pipeline.core import store
from pipeline.core.experiments import load_config, load_experiments, store_of
from pipeline.core.graph import BEFORE_TRAINING


def analysis_graph(experiment: str, config_path: Path, root: Path):
    config = load_config(config_path)
    if experiment not in (config.get("experiments") or {}):
        raise SystemExit(f"{config_path}: no experiment {experiment!r}")
    experiments = load_experiments(config, root, [experiment])
    if experiments.values[experiment].get("analysis") is None:
        raise SystemExit(
            f"{config_path}: experiments.{experiment} has no analysis section; add `analysis: {{}}`"
        )
    return experiments.graphs_of([experiment], str(config_path))[experiment], store_of(config)


def smooth(values: list[float | None], width: int = 1) -> list[float | None]:
    """Mean over each block and its ``width`` neighbours on either side (None stays None)."""
    out = []
    for i, value in enumerate(values):
        window = [v for v in values[max(0, i - width) : i + width + 1] if v is not None]
        out.append(None if value is None else sum(window) / len(window))
    return out


def suggest(accuracy: list[float | None], layers: list[int]) -> int | None:
    """The block with the best smoothed accuracy (the earliest on a tie)."""
    scored = [
        (v, -layer) for v, layer in zip(smooth(accuracy), layers, strict=True) if v is not None
    ]
    return -max(scored)[1] if scored else None


def validation_accuracies(paths: dict[str, Path], model_dir: Path, params) -> dict[str, list]:
    """Per task, the logistic probe's validation accuracy at every cached block."""
    import torch

    from pipeline.analysis import labels, readers, truth
    from pipeline.analysis.layer_cache import LayerCache
    from pipeline.data.schema import read_dialogs

    out: dict[str, list] = {}
    cache = LayerCache(paths["layer_cache:statements"])
    pairs = truth.contrast_pairs(read_dialogs(paths["statements"] / "dialogs.parquet"), params.seed)
    out["layers"] = cache.layers
    out["truth"] = []
    for layer in cache.layers:
        feats = {
            s: (cache.features(params.statements_pooling, layer, p.ids_a),
                cache.features(params.statements_pooling, layer, p.ids_b))
            for s, p in pairs.items() if s in ("train", "validation")
        }  # fmt: skip
        a_true = pairs["train"].a_true.bool()
        x, va, vb = readers.standardize(torch.cat(feats["train"]), *feats["validation"])
        probe = readers.fit_logistic(x, torch.cat([a_true, ~a_true]), params.l2, params.max_iter)
        correct = readers.score_choice(probe, va, vb) == pairs["validation"].a_true.bool()
        out["truth"].append(float(correct.float().mean()))
    dialogs = LayerCache(paths["layer_cache:dialogs"])
    rows = read_dialogs(paths["filter"] / "dialogs.parquet")
    task = labels.build_task(rows, set(dialogs.index["id"].to_list()), params)
    if not task.items.get("validation"):
        out["labels"] = [None] * len(cache.layers)
        return out
    model = tokenizer = None
    from pipeline.mechanism.similarity import minilm_available

    if not minilm_available():
        from pipeline.mechanism.modeling import load_model

        model, tokenizer = load_model(model_dir)
    emb, _ = labels.label_embeddings(task.descriptions, model, tokenizer)
    params.random_directions = 1
    per_layer = labels.layer_readers(dialogs, task, emb, params)["logistic"]
    out["labels"] = [per_layer[str(layer)]["validation"]["mean"] for layer in dialogs.layers]
    return out


def _fmt(value: float | None, pct: bool = True) -> str:
    if value is None:
        return "–"
    return f"{100 * value:.0f}%" if pct else f"{value:.0f}"


def main(argv: list[str] | None = None) -> None:
    from pipeline.analysis.params import ProbeParams

    parser = argparse.ArgumentParser(prog="python -m pipeline.analysis.layers", description=__doc__)
    parser.add_argument("--experiment", required=True)
    parser.add_argument("--config", type=Path, default=Path("config/config.yaml"))
    parser.add_argument("--build", action="store_true", help="build missing artifacts first")
    parser.add_argument("--cores", default="all", help="Snakemake --cores for --build")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    graph, store_dir = analysis_graph(args.experiment, args.config, Path("."))
    nodes = {name: graph[name] for name in (*BEFORE_TRAINING, "filter", "prepare_model")}
    paths = {name: Path(node.path(store_dir)) for name, node in nodes.items()}
    missing = [str(p) for p in paths.values() if not (p / store.MANIFEST).exists()]
    if missing:
        command = ["snakemake", "--cores", args.cores, *missing]
        if not args.build:
            sys.exit("missing artifacts; build them with\n  " + shlex.join(command))
        # This environment's Snakemake, as the rules use this environment's interpreter.
        subprocess.run([sys.executable, "-m", *command], check=True)
    params = ProbeParams(**graph["probes"].params)
    figures = validation_accuracies(paths, paths["prepare_model"], params)
    lens = json.loads((paths["lens"] / "lens.json").read_text())["tasks"]
    ranks = lens.get("relations", {}).get("answer", {}).get("rank_median", [])
    layers = figures["layers"]
    print(f"{args.experiment}: validation split; lens = median rank of relation answers")
    print(f"{'block':>5}  {'label probe':>11}  {'truth probe':>11}  {'lens rank':>9}")
    for i, layer in enumerate(layers):
        rank = ranks[layer] if layer < len(ranks) else None
        print(
            f"{layer:>5}  {_fmt(figures['labels'][i]):>11}  {_fmt(figures['truth'][i]):>11}  "
            f"{_fmt(rank, pct=False):>9}"
        )
    task = "labels" if any(v is not None for v in figures["labels"]) else "truth"
    best = suggest(figures[task], layers)
    print(
        f"suggested read layer: {best} (best {task} probe on the validation split, averaged with "
        "its neighbouring blocks); put it in train.read_layers (and write_layer)"
    )
    if args.json:
        args.json.write_text(json.dumps({**figures, "lens_rank": ranks, "suggested": best}) + "\n")


if __name__ == "__main__":
    main()
