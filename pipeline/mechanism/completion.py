"""Greedy completions of chat prompts by the target model itself (data it can later be read on).

Used by the data stages that write dialogs with the model's own replies, and by ``pipeline.read
--complete``.
"""

from __future__ import annotations

import time


def generate_completions(model, tokenizer, conversations, max_new_tokens: int, batch_size: int):
    """Greedy completions of chat prompts, batched with left padding; returns (texts, stats)."""
    import torch
    from tqdm import tqdm
    from transformers import GenerationConfig

    tokenizer.padding_side = "left"
    texts = [
        tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
        for c in conversations
    ]
    lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    # Batching prompts of similar length wastes little compute on padding.
    order = sorted(range(len(texts)), key=lambda i: (lengths[i], i))
    eos = {
        i
        for i in (model.generation_config.eos_token_id, tokenizer.eos_token_id)
        if isinstance(i, int)
    }
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=sorted(eos),
    )
    device = next(model.parameters()).device
    completions: list[str] = [""] * len(texts)
    generated = 0
    start = time.perf_counter()
    model.eval()
    with (
        tqdm(
            total=len(texts) * max_new_tokens,
            unit="tok",
            unit_scale=True,
            desc="completions",
            dynamic_ncols=True,
        ) as bar,
        torch.inference_mode(),
    ):
        for first in range(0, len(order), batch_size):
            batch = order[first : first + batch_size]
            encoded = tokenizer(
                [texts[i] for i in batch],
                add_special_tokens=False,
                padding=True,
                return_tensors="pt",
            ).to(device)
            output = model.generate(**encoded, generation_config=config)
            new = output[:, encoded["input_ids"].shape[1] :]
            for row, i in zip(new.tolist(), batch, strict=True):
                stop = next((k for k, t in enumerate(row) if t in eos), len(row))
                generated += stop
                completions[i] = tokenizer.decode(row[:stop], skip_special_tokens=True).strip()
            bar.update(len(batch) * max_new_tokens)
            bar.set_postfix(generated=generated)
    seconds = time.perf_counter() - start
    stats = {
        "generated_tokens": generated,
        "generation_seconds": round(seconds, 2),
        "tokens_per_second": round(generated / max(seconds, 1e-9), 1),
    }
    return completions, stats
