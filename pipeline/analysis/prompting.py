"""The two readers that are models rather than probes: the base model prompted zero-shot, and the
trained decoder scoring candidate answers about the activations it reads."""

from __future__ import annotations

import sys
from pathlib import Path

import torch


def device_of(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def load_reader_model(inputs: dict[str, Path], dtype: str, device: str):
    """(model, tokenizer, decoder settings or None): the decoder when a ``train`` input is given
    (its base model is the same module with the adapter disabled), else the prepared model."""
    import json

    from pipeline.mechanism.decoder_files import load_decoder
    from pipeline.mechanism.decoder_settings import DecoderSettings
    from pipeline.mechanism.modeling import load_model

    if "train" not in inputs:
        model, tokenizer = load_model(inputs["model"], dtype, device_of(device))
        return model.eval(), tokenizer, None
    manifest = json.loads((inputs["train"] / "_manifest.json").read_text())
    settings = DecoderSettings.from_manifest(manifest, where=str(inputs["train"]))
    model, tokenizer = load_decoder(
        inputs["model"], inputs["train"] / "adapter", manifest, dtype, device_of(device)
    )
    return model, tokenizer, settings


def first_token(tokenizer, text: str) -> int:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"{text!r} encodes to no token")
    return ids[0]


@torch.no_grad()
def zero_shot_true_minus_false(
    model, tokenizer, statements: list[str], batch_size: int, suffix: str = "True or false?"
) -> list[float]:
    """The base model's logit of "True" minus "False" as its first answer token, per statement."""
    from pipeline.mechanism.dialogs import encode, render
    from pipeline.mechanism.patching import pad_batch
    from pipeline.mechanism.reading import target_mode

    true_id, false_id = first_token(tokenizer, "True"), first_token(tokenizer, "False")
    rows = [
        encode(
            tokenizer,
            render(tokenizer, [{"role": "user", "content": f"{s}\n{suffix}"}], True),
        )
        for s in statements
    ]
    device = next(model.parameters()).device
    out: list[float] = []
    for start in range(0, len(rows), batch_size):
        ids, mask = pad_batch(rows[start : start + batch_size], tokenizer.pad_token_id, "left")
        with target_mode(model):
            logits = model(
                input_ids=ids.to(device), attention_mask=mask.to(device), logits_to_keep=1
            ).logits[:, -1]
        out += (logits[:, true_id] - logits[:, false_id]).float().tolist()
    return out


def decoder_logliks(
    model,
    tokenizer,
    settings,
    dialogs: list[tuple[list[dict], int]],
    queries: list[tuple[int, str, str]],
    batch_size: int,
    desc: str,
) -> list[float]:
    """Mean log-likelihood per token of each (dialog index, question, answer), the decoder
    reading that dialog's activations (the evaluation's "true" condition)."""
    from pipeline.mechanism.decoder_prompt import build_decoder_example
    from pipeline.mechanism.reading import compute_reads, loglik_batched

    reads = compute_reads(model, tokenizer, dialogs, settings, batch_size, desc=f"{desc}: reading")
    examples, acts = [], []
    for index, question, answer in queries:
        read = reads[index]
        examples.append(
            build_decoder_example(
                tokenizer,
                read.read_positions,
                question,
                answer,
                settings.align_positions,
                settings.at(),
            )
        )
        acts.append(read.acts)
    print(f"{desc}: {len(examples)} decoder prompts", file=sys.stderr)
    results = loglik_batched(model, tokenizer, examples, acts, batch_size, desc, settings.inject)
    return [-nll / max(n, 1) for nll, n in results]


@torch.no_grad()
def decoder_yes_minus_no(
    model,
    tokenizer,
    settings,
    dialogs: list[tuple[list[dict], int]],
    question: str,
    batch_size: int,
) -> tuple[list[float], torch.Tensor]:
    """The decoder's logit of "Yes" minus "No" as its first answer token, reading each dialog's
    activations and asked ``question`` (one forward per dialog); and the state those logits are
    read from, the input of the vocabulary projection at that position: (dialogs x d) float32.

    The answer is a linear function of that state, so a probe fitted on it says whether the
    decoder's answer could name what it reads, apart from whether it does.
    """
    from pipeline.mechanism.decoder import collate, decoder_logits
    from pipeline.mechanism.decoder_prompt import build_decoder_example
    from pipeline.mechanism.reading import compute_reads

    yes, no = first_token(tokenizer, "Yes"), first_token(tokenizer, "No")
    reads = compute_reads(model, tokenizer, dialogs, settings, batch_size, desc="reading")
    device = next(model.parameters()).device
    captured: list[torch.Tensor] = []
    head = model.get_output_embeddings()
    hook = head.register_forward_pre_hook(lambda _m, args: captured.append(args[0][:, -1]))
    out: list[float] = []
    try:
        for start in range(0, len(reads), batch_size):
            chunk = reads[start : start + batch_size]
            examples = [
                build_decoder_example(tokenizer, r.read_positions, question, None,
                                      settings.align_positions, settings.at())
                for r in chunk
            ]  # fmt: skip
            batch = collate(
                examples, [r.acts for r in chunk], tokenizer.pad_token_id, padding_side="left"
            ).to(device)
            logits = decoder_logits(model, batch, inject=settings.inject, logits_to_keep=1)[:, -1]
            out += (logits[:, yes] - logits[:, no]).float().tolist()
    finally:
        hook.remove()
    return out, torch.cat(captured).float().cpu()
