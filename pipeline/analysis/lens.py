"""Stage `lens`: the logit lens, block by block, on relation clozes and a translation task.

Inputs: ``model`` (prepared model), ``relations`` (``data/relations.yaml``) and ``translation``
(``data/lens/translation.yaml``). Each prompt is plain text (no chat template); the residual at
its last token after every block is decoded through the model's final norm and unembedding, and
the rank (1 = top) and probability of the answer's first token are recorded per block, for the
translation task also those of the English word (llm-latent-language, Wendler et al. 2024: does
the latent pass through English?). Where a word has several first tokens (with and without a
leading space) the best of them counts. Outputs ``lens.json`` (per task and block: median and
interquartile range of rank and probability, top-1 rate), ``lens_items.jsonl`` and ``lens.png``.
"""

from __future__ import annotations

import json
import logging
import os
import random
from pathlib import Path
from typing import Any

import yaml

from pipeline.analysis.params import LensParams
from pipeline.core import stage

log = logging.getLogger("pipeline.analysis.lens")


def relation_prompts(relations, params: LensParams) -> list[dict[str, Any]]:
    """ "<sentence> <cloze>" prompts whose next word is the fact's object."""
    from pipeline.data.relations import is_echo

    rng = random.Random(params.seed)
    prompts = []
    for rel in relations:
        facts = list(rel.facts)
        rng.shuffle(facts)
        for fact in facts[: params.max_facts_per_relation]:
            usable = [
                s.format(subject=fact.subject)
                for s in rel.sentences
                if not is_echo(rel, fact, s.format(subject=fact.subject))
            ]
            if usable:
                prompts.append(
                    {
                        "task": "relations",
                        "relation": rel.name,
                        "prompt": f"{rng.choice(usable)} {rel.cloze}",
                        "answer": [f" {fact.object}"],
                        "english": None,
                    }
                )
    return prompts


def load_translation(path: Path) -> tuple[dict[str, str], list[dict[str, str]]]:
    """(language code -> name, words), checked: every word has every language."""
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("languages"), dict):
        raise ValueError(f"{path}: field 'languages': expected a mapping of code to name")
    languages, words = data["languages"], data.get("words")
    if not isinstance(words, list) or len(words) < 2:
        raise ValueError(f"{path}: field 'words': expected a list of at least two entries")
    for i, word in enumerate(words):
        missing = sorted(set(languages) - set(word or {}))
        if missing or not all(isinstance(word[c], str) and word[c] for c in languages):
            raise ValueError(f"{path}: words[{i}]: needs a non-empty word for {sorted(languages)}")
    if "en" not in languages:
        raise ValueError(f"{path}: field 'languages' needs 'en' (the English reference)")
    return languages, words


def translation_prompts(languages, words, params: LensParams, tokenizer) -> list[dict[str, Any]]:
    """Few-shot prompts ``Français: "fleur" - Deutsch: "``; items whose answer or source starts
    like the English word are left out (the lens could not tell the two apart)."""
    rng = random.Random(params.seed)
    prompts = []
    for pair in params.translation_pairs:
        source, _, target = pair.partition("-")
        if source not in languages or target not in languages:
            raise ValueError(f"lens: translation pair {pair!r}: languages are {sorted(languages)}")
        for i, word in enumerate(words):
            english = _first_tokens(tokenizer, [word["en"], f" {word['en']}"])
            answer = _first_tokens(tokenizer, [word[target], f" {word[target]}"])
            if answer & english or word[source].lower() == word["en"].lower():
                continue
            others = [w for j, w in enumerate(words) if j != i]
            shots = rng.sample(others, min(params.shots, len(others)))
            line = '{}: "{}" - {}: "{}"'
            text = "\n".join(
                line.format(languages[source], w[source], languages[target], w[target])
                for w in shots
            )
            query = f'{languages[source]}: "{word[source]}" - {languages[target]}: "'
            prompts.append(
                {
                    "task": f"translation:{pair}",
                    "word": word["en"],
                    "prompt": f"{text}\n{query}" if text else query,
                    "answer": [word[target], f" {word[target]}"],
                    "english": [word["en"], f" {word['en']}"],
                }
            )
    return prompts


def _first_tokens(tokenizer, texts: list[str]) -> set[int]:
    return {ids[0] for t in texts if (ids := tokenizer(t, add_special_tokens=False)["input_ids"])}


def final_norm(model):
    """The norm between the last block and the unembedding, found by its usual names."""
    base = model.get_decoder() if hasattr(model, "get_decoder") else model
    for owner in (base, model):
        for name in ("norm", "final_layernorm", "ln_f", "final_norm"):
            module = getattr(owner, name, None)
            if module is not None and callable(module):
                return module
    raise ValueError(f"no final norm (norm, final_layernorm, ln_f) found in {type(model).__name__}")


def lens_ranks(model, tokenizer, prompts: list[dict], batch_size: int) -> list[dict[str, Any]]:
    """Per prompt and block: rank and probability of the answer (and English) tokens."""
    import torch

    from pipeline.mechanism.modeling import decoder_layers
    from pipeline.mechanism.patching import pad_batch, read_activations

    layers = list(range(len(decoder_layers(model))))
    norm, unembed = final_norm(model), model.get_output_embeddings()
    device = next(model.parameters()).device
    rows = [tokenizer(p["prompt"])["input_ids"] for p in prompts]
    out = []
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            ids, mask = pad_batch(rows[start : start + batch_size], tokenizer.pad_token_id, "left")
            acts = read_activations(model, ids.to(device), mask.to(device), layers)
            latent = torch.stack([acts[layer][:, -1] for layer in layers], dim=1)  # B, L, D
            probs = unembed(norm(latent)).float().softmax(-1)  # B, L, V
            for row, prompt in enumerate(prompts[start : start + batch_size]):
                record = {k: v for k, v in prompt.items() if k not in ("answer", "english")}
                for key in ("answer", "english"):
                    if prompt[key] is None:
                        continue
                    tokens = sorted(_first_tokens(tokenizer, prompt[key]))
                    p = probs[row][:, tokens]  # L, n_tokens
                    ranks = (probs[row][:, None, :] > p[:, :, None]).sum(-1) + 1
                    record[f"{key}_rank"] = ranks.min(-1).values.tolist()
                    record[f"{key}_prob"] = p.max(-1).values.tolist()
                out.append(record)
    return out


def summarize_lens(records: list[dict], n_layers: int) -> dict[str, Any]:
    """Per task and key: median and quartiles of rank and probability per block, top-1 rate."""
    import numpy as np

    tasks: dict[str, Any] = {}
    for task in sorted({r["task"] for r in records}):
        rows = [r for r in records if r["task"] == task]
        entry: dict[str, Any] = {"n": len(rows)}
        for key in ("answer", "english"):
            if f"{key}_rank" not in rows[0]:
                continue
            ranks = np.array([r[f"{key}_rank"] for r in rows], dtype=float)
            probs = np.array([r[f"{key}_prob"] for r in rows], dtype=float)
            entry[key] = {
                "rank_median": np.median(ranks, 0).tolist(),
                "rank_q25": np.percentile(ranks, 25, 0).tolist(),
                "rank_q75": np.percentile(ranks, 75, 0).tolist(),
                "prob_median": np.median(probs, 0).tolist(),
                "prob_q25": np.percentile(probs, 25, 0).tolist(),
                "prob_q75": np.percentile(probs, 75, 0).tolist(),
                "top1": (ranks == 1).mean(0).tolist(),
            }
            first = np.nonzero(np.median(ranks, 0) <= 10)[0]
            entry[key]["first_block_median_rank_le_10"] = int(first[0]) if first.size else None
        tasks[task] = entry
    return {"n_blocks": n_layers, "tasks": tasks}


def run(params: LensParams, inputs: dict[str, Path], workdir: Path, info: dict[str, Any]) -> None:

    from pipeline.analysis.plots import plot_lens
    from pipeline.data.relations import load_relations, select
    from pipeline.mechanism.modeling import decoder_layers, load_model

    model, tokenizer = load_model(inputs["model"], params.dtype, params.device)
    model.eval()
    relations = load_relations(inputs["relations"])
    if params.relations is not None:
        relations = select(relations, params.relations, "lens.relations")
    languages, words = load_translation(inputs["translation"])
    prompts = relation_prompts(relations, params)
    prompts += translation_prompts(languages, words, params, tokenizer)
    records = lens_ranks(model, tokenizer, prompts, params.batch_size)
    report = {
        "description": "logit lens: the last token's residual after each block, through the "
        "final norm and the unembedding; rank 1 = the top token",
        **summarize_lens(records, len(decoder_layers(model))),
    }
    (workdir / "lens.json").write_text(json.dumps(report, indent=2) + "\n")
    with open(workdir / "lens_items.jsonl", "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    plot_lens(report, workdir / "lens.png")
    info["prompts"] = {task: r["n"] for task, r in report["tasks"].items()}


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    stage.main("lens", LensParams, run, needs=("model", "relations", "translation"))
