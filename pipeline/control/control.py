"""Stage `control`: steer the target through the gradient of the frozen decoder's answers.

docs/design.md §5.6. One base model in memory carries two LoRA adapters: the trained decoder adapter
(frozen, loaded from the ``train`` artifact) and a new ``steer`` adapter on the target's blocks up
to ``read_layer``. The target forward runs with only ``steer`` active, the decoder forward with only
``decoder`` active; the read activations stay in the autograd graph, so the decoder's cross-entropy
of the control's answers reaches the steer adapter through the patched placeholders.

The two adapters share one model (``pipeline.control.rig``, which says why switching them inside
one graph is sound).

Inputs: ``model`` (prepared folder), ``train`` (decoder artifact: ``adapter/`` and a manifest whose
params give read_layer, write_layer, positions, align_positions), ``prompts`` (YAML list of user
prompts), ``qa`` (YAML ``targets: [{label, description, qa: [{question, answer}]}]``).
Outputs: ``control.json`` (decoder scores, fluency, losses), ``control_generations.jsonl``,
``control.md``, ``adapter/steer/`` (the steering adapter, PEFT format), ``mean_diff.safetensors``.
"""

from __future__ import annotations

import json
import logging
import random
import statistics
import time
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm.auto import tqdm

from pipeline.control import steering
from pipeline.control.inputs import (
    control_target,
    decoder_provenance,
    decoder_settings,
    load_prompts,
)
from pipeline.control.params import ControlParams
from pipeline.control.rig import (
    MODES,
    STEER,
    Rig,
    attach_adapters,
    steer_parameters,
    use_adapter,
)
from pipeline.core import stage
from pipeline.mechanism.lora import save_adapter
from pipeline.mechanism.modeling import decoder_layers, load_model, resolve_device

log = logging.getLogger("pipeline.control.control")


def train_steer(rig: Rig, reads, examples, params: ControlParams) -> list[dict]:
    """Adam on the steer adapter; ``examples[i][q]`` pairs prompt i with QA pair q.

    With ``per_layer_loss`` the output of every block up to read_layer is patched into the decoder
    in turn; each loss is backpropagated as soon as it is computed (the blocks' graphs are
    disjoint), so memory holds one decoder graph at a time.
    """
    rng = random.Random(params.seed)
    if params.per_layer_loss and rig.settings.all_layers:
        raise ValueError(
            "control.per_layer_loss patches one block's output at a time; this decoder reads "
            f"blocks {list(rig.settings.read_layers)} at once"
        )
    layers = (
        list(range(rig.settings.read_layer + 1))
        if params.per_layer_loss
        else [rig.settings.read_layer]
    )
    trainable = steer_parameters(rig.model)
    optimizer = torch.optim.Adam(trainable, lr=params.lr)
    history = []
    bar = tqdm(range(1, params.steps + 1), desc="steer", unit="step")
    for step in bar:
        started = time.time()
        rows = rng.sample(range(len(reads)), min(params.batch_size, len(reads)))
        batch = [examples[i][rng.randrange(len(examples[i]))] for i in rows]
        optimizer.zero_grad(set_to_none=True)
        with rig.target("steered"):
            chosen = [reads[i] for i in rows]
            acts = (
                rig.read(chosen, layers, isolate=True)
                if params.per_layer_loss
                else {rig.settings.read_layer: rig.decoder_acts(chosen)}
            )
        losses = {}
        for layer in layers:
            loss = rig.decoder_loss(batch, acts.pop(layer))
            (loss / len(layers)).backward()
            losses[layer] = loss.item()
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        history.append(
            {
                "step": step,
                "loss": statistics.fmean(losses.values()),
                "read_layer_loss": losses[rig.settings.read_layer],
                "grad_norm": float(grad_norm),
                "seconds": round(time.time() - started, 3),
            }
        )
        bar.set_postfix(loss=f"{losses[rig.settings.read_layer]:.3f}")
    use_adapter(rig.model, STEER)
    return history


@torch.no_grad()
def score(rig: Rig, reads, examples, mode: str, batch_size: int, vector=None) -> list[dict]:
    """Per (prompt, QA pair): the decoder's summed answer NLL and its token count."""
    items = []
    for start in range(0, len(reads), batch_size):
        chunk = list(range(start, min(start + batch_size, len(reads))))
        with rig.target(mode, vector):
            acts = rig.decoder_acts([reads[i] for i in chunk])
        for q in range(len(examples[chunk[0]])):
            nll, counts = rig.decoder_loss([examples[i][q] for i in chunk], acts, "none")
            items += [
                {"prompt": i, "qa": q, "nll": float(n), "tokens": int(c)}
                for i, n, c in zip(chunk, nll.tolist(), counts.tolist(), strict=True)
            ]
    return items


def summarize(items: list[dict]) -> dict[str, float]:
    loglik = [-it["nll"] for it in items]
    tokens = sum(it["tokens"] for it in items)
    return {
        "answer_nll_per_token": -sum(loglik) / tokens,
        "answer_loglik_mean": statistics.fmean(loglik),
        "answer_loglik_sd": statistics.stdev(loglik) if len(loglik) > 1 else 0.0,
        "n_items": len(items),
    }


# --- the stage ---------------------------------------------------------------------------------


def split_prompts(prompts: list[str], n_train: int, n_eval: int, seed: int):
    order = list(range(len(prompts)))
    random.Random(seed).shuffle(order)
    if n_train >= len(prompts):
        raise ValueError(f"n_prompts={n_train} leaves none of the {len(prompts)} prompts held out")
    held = order[n_train:]
    held = held[:n_eval] if n_eval > 0 else held
    return [prompts[i] for i in order[:n_train]], [prompts[i] for i in held]


def _markdown(result: dict, generations: Path) -> str:
    rows = [json.loads(line) for line in generations.read_text().splitlines()]
    lines = [
        f"# Control: {result['target']['label']}",
        "",
        f"Description: {result['target']['description']}  ",
        f"Decoder reads block {result['decoder']['read_layer']}; steering adapter trained "
        f"{result['train']['steps']} steps (loss {result['train']['loss_first']:.3f} -> "
        f"{result['train']['loss_last']:.3f}); {result['n_eval_prompts']} held-out prompts.",
        "",
        "| target | decoder answer NLL/token | answer log-lik (mean ± sd) | "
        "fluency PPL (base model) |",
        "| --- | --- | --- | --- |",
    ]
    for mode in MODES:
        s, f = result["score"][mode], result["fluency"][mode]
        ppl = f"{f['perplexity']:.2f}" if f["perplexity"] is not None else "n/a"
        lines.append(
            f"| {mode} | {s['answer_nll_per_token']:.3f} | "
            f"{s['answer_loglik_mean']:.2f} ± {s['answer_loglik_sd']:.2f} | {ppl} |"
        )
    lines += ["", "## Generations (first held-out prompts)", ""]
    for row in rows[:3]:
        lines.append(f"**{row['prompt']}**  ")
        for mode in MODES:
            text = row[mode]["text"].replace("\n", " ")
            lines.append(f"- *{mode}*: {text}")
        lines.append("")
    return "\n".join(lines) + "\n"


def prepare(params: ControlParams, inputs: dict[str, Path]):
    """The rig (model + both adapters), the control target and the train / held-out prompts."""
    missing = sorted({"model", "train", "prompts", "qa"} - set(inputs))
    if missing:
        raise ValueError(f"control needs the inputs {missing}")
    target = control_target(inputs["qa"], params.target, params.qa_file_override)
    prompts = load_prompts(inputs["prompts"])
    split = split_prompts(prompts, params.n_prompts, params.n_eval_prompts, params.seed)
    settings = decoder_settings(inputs["train"])
    device = resolve_device(params.device)
    torch.manual_seed(params.seed)
    base, tokenizer = load_model(inputs["model"], params.dtype, device)
    settings.check_depth(len(decoder_layers(base)))
    adapter = inputs["train"] / "adapter"
    model = attach_adapters(
        base, adapter, settings.read_layer, params.lora_r, params.lora_alpha, params.seed
    )
    rig = Rig(model, tokenizer, settings, device=device)
    rig.bf16 = params.dtype == "bfloat16"
    return rig, target, *split


def compare(rig: Rig, params: ControlParams, eval_prompts, reads, examples, vector):
    """Per mode: the decoder's score on held-out prompts, greedy generations, their fluency."""
    scores, texts, fluency = {}, {}, {}
    gen_batch = max(params.batch_size, min(len(eval_prompts), 16))
    args = (rig.model, rig.tokenizer, eval_prompts)
    for mode in MODES:
        scores[mode] = summarize(score(rig, reads, examples, mode, params.batch_size, vector))
        with rig.target(mode, vector):
            texts[mode] = steering.generate(
                *args, params.max_new_tokens, gen_batch, rig.device, desc=f"generate {mode}"
            )
        with rig.target("unsteered"):
            nll = steering.completion_nll(*args, texts[mode], params.batch_size, rig.device)
        fluency[mode] = nll
    return scores, texts, fluency


def run(params: ControlParams, inputs: dict[str, Path], workdir: Path, info: dict) -> None:
    from safetensors.torch import save_file

    rig, target, train_prompts, eval_prompts = prepare(params, inputs)
    reads, examples = rig.examples([*train_prompts, *eval_prompts], target["qa"])
    n_train = len(train_prompts)
    seconds, clock = {}, time.time()
    with rig.target("unsteered"):
        vector = steering.mean_difference_vector(
            rig.model, rig.tokenizer, train_prompts, target["description"], rig.settings.read_layer,
            params.batch_size, rig.device,
        )  # fmt: skip
    scaled = (params.mean_diff_scale * vector).to(rig.device)
    seconds["mean_diff"], clock = round(time.time() - clock, 2), time.time()
    history = train_steer(rig, reads[:n_train], examples[:n_train], params)
    seconds["train"], clock = round(time.time() - clock, 2), time.time()
    scores, texts, fluency = compare(
        rig, params, eval_prompts, reads[n_train:], examples[n_train:], scaled
    )
    seconds["compare"] = round(time.time() - clock, 2)

    with open(workdir / "control_generations.jsonl", "w") as handle:
        for i, prompt in enumerate(eval_prompts):
            row = {"prompt": prompt}
            for mode in MODES:
                nll, tokens = fluency[mode][0][i], fluency[mode][1][i]
                row[mode] = {"text": texts[mode][i], "tokens": tokens, "nll": nll}
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    losses = [h["read_layer_loss"] for h in history]
    result = {
        "target": target,
        "decoder": {**asdict(rig.settings), **decoder_provenance(inputs["train"])},
        "n_train_prompts": n_train,
        "n_eval_prompts": len(eval_prompts),
        "train": {"steps": len(history), "loss_first": losses[0], "loss_last": losses[-1],
                  "history": history},
        "score": scores,
        "fluency": {mode: {"perplexity": steering.perplexity(*fluency[mode]),
                           "mean_tokens": statistics.fmean(fluency[mode][1])} for mode in MODES},
        "mean_diff": {"layer": rig.settings.read_layer, "scale": params.mean_diff_scale,
                      "norm": float(vector.norm())},
        "seconds": seconds,
    }  # fmt: skip
    for mode in ("steered", "mean_diff"):
        gain = scores[mode]["answer_loglik_mean"] - scores["unsteered"]["answer_loglik_mean"]
        result[f"{mode}_minus_unsteered_loglik"] = gain
    (workdir / "control.json").write_text(json.dumps(result, indent=2) + "\n")
    (workdir / "control.md").write_text(_markdown(result, workdir / "control_generations.jsonl"))
    save_adapter(rig.model, workdir / "adapter", selected_adapters=[STEER])
    metadata = {"layer": str(rig.settings.read_layer), "scale": str(params.mean_diff_scale)}
    save_file({"vector": vector.contiguous()}, str(workdir / "mean_diff.safetensors"), metadata)
    log.info("answer log-lik: %s", {m: round(scores[m]["answer_loglik_mean"], 2) for m in MODES})
    info.update({"loss_first": losses[0], "loss_last": losses[-1], "seconds": seconds})
    for mode in MODES:
        info[f"loglik_{mode}"] = scores[mode]["answer_loglik_mean"]
        info[f"fluency_ppl_{mode}"] = result["fluency"][mode]["perplexity"]


if __name__ == "__main__":
    stage.main("control", ControlParams, run)
