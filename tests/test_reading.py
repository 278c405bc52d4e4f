"""Reading with a decoder: forced choices among candidate answers from one forward each."""

from __future__ import annotations

import torch

from pipeline.mechanism.decoder import collate, decoder_logits
from pipeline.mechanism.decoder_prompt import build_decoder_example
from pipeline.mechanism.dialogs import tokenize_read_dialog
from pipeline.mechanism.reading import choice_scores, loglik_batched


def _candidates(tokenizer, answers_per_item):
    read = tokenize_read_dialog(tokenizer, [{"role": "user", "content": "We sail at dawn."}], 0)
    return [
        [build_decoder_example(tokenizer, read.read_positions, "What?", a) for a in answers]
        for answers in answers_per_item
    ], read


@torch.no_grad()
def test_a_choice_is_the_logit_of_the_first_token_where_the_answers_differ(tiny_model, tokenizer):
    items = [("Yes.", "No."), ("A cat.", "A dog."), ("Sails.", "Sails.")]
    candidates, read = _candidates(tokenizer, items)
    d = tiny_model.config.hidden_size
    acts = [torch.randn(len(read.read_positions), d, generator=torch.Generator().manual_seed(i))
            for i in range(len(items))]  # fmt: skip
    scores = choice_scores(tiny_model, tokenizer, candidates, acts, batch_size=2)
    for i, cands in enumerate(candidates[:2]):
        a, b = cands[0].input_ids, cands[1].input_ids
        k = next(j for j in range(min(len(a), len(b))) if a[j] != b[j])
        batch = collate([cands[0]], [acts[i]], tokenizer.pad_token_id)
        logits = decoder_logits(tiny_model, batch)[0, k - 1]
        torch.testing.assert_close(
            torch.tensor(scores[i]), logits[[a[k], b[k]]].float(), rtol=1e-4, atol=1e-4
        )
    # identical answers never diverge: both are scored by their whole log-likelihood
    full = loglik_batched(tiny_model, tokenizer, candidates[2], [acts[2]] * 2)
    assert scores[2][0] == scores[2][1] == -full[0][0] / full[0][1]
