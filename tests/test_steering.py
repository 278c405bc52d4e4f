"""The mean-difference baseline and the generation / fluency helpers, on tiny random models."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from pipeline.control.steering import (
    add_vector,
    completion_nll,
    generate,
    mean_difference_vector,
    perplexity,
    prompt_ids,
    user_turn,
)

PROMPTS = ["Tell me about your morning.", "What is your favorite animal?", "Describe a storm."]
CONTROL = "Talk like a pirate who loves the sea."


def test_user_turn_covers_the_same_tokens_with_and_without_a_system_prompt(tokenizer):
    for prompt in PROMPTS:
        ids_with, pos_with = user_turn(tokenizer, prompt, CONTROL)
        ids_without, pos_without = user_turn(tokenizer, prompt, None)
        assert [ids_with[p] for p in pos_with] == [ids_without[p] for p in pos_without]
        user_text = tokenizer.decode([ids_with[p] for p in pos_with])
        assert prompt in user_text and CONTROL not in user_text
        # SmolLM2's template adds a default system prompt; it is not part of the user turn.
        assert "SmolLM" not in user_text
        assert ids_without == prompt_ids(tokenizer, prompt)


def test_mean_difference_vector_has_the_model_width_and_changes_generations(tiny_model, tokenizer):
    layer = 1
    vector = mean_difference_vector(tiny_model, tokenizer, PROMPTS, CONTROL, layer, batch_size=2)
    assert vector.shape == (tiny_model.config.hidden_size,)
    assert torch.isfinite(vector).all() and vector.norm() > 0
    # Padding must not leak into the means: another batch size gives the same vector.
    same = mean_difference_vector(tiny_model, tokenizer, PROMPTS, CONTROL, layer, batch_size=3)
    torch.testing.assert_close(same, vector, atol=1e-5, rtol=1e-4)
    plain = generate(tiny_model, tokenizer, PROMPTS, max_new_tokens=8, batch_size=3)
    scale = 20.0 / float(vector.norm())  # well above the tiny model's activation scale
    with add_vector(tiny_model, layer, scale * vector):
        steered = generate(tiny_model, tokenizer, PROMPTS, max_new_tokens=8, batch_size=3)
    assert steered != plain
    assert generate(tiny_model, tokenizer, PROMPTS, max_new_tokens=8, batch_size=3) == plain


def test_add_vector_shifts_the_block_output_everywhere(tiny_model, tokenizer):
    from pipeline.mechanism.patching import read_activations

    ids = torch.tensor([prompt_ids(tokenizer, PROMPTS[0])])
    mask = torch.ones_like(ids)
    vector = torch.randn(tiny_model.config.hidden_size)
    with torch.no_grad():
        before = read_activations(tiny_model, ids, mask, [2])[2]
        with add_vector(tiny_model, 2, vector):
            after = read_activations(tiny_model, ids, mask, [2])[2]
    torch.testing.assert_close(after - before, vector.expand_as(before), atol=1e-5, rtol=1e-5)


def test_batched_generation_matches_one_by_one(tiny_model, tokenizer):
    batched = generate(tiny_model, tokenizer, PROMPTS, max_new_tokens=6, batch_size=3)
    single = [generate(tiny_model, tokenizer, [p], max_new_tokens=6)[0] for p in PROMPTS]
    assert batched == single and all(isinstance(t, str) for t in batched)


@torch.no_grad()
def test_completion_nll_matches_a_direct_forward(tiny_model, tokenizer):
    completions = ["Arr, the sea!", "", "A cat, of course."]
    nll, counts = completion_nll(tiny_model, tokenizer, PROMPTS, completions, batch_size=2)
    assert counts[1] == 0 and nll[1] == 0
    head = prompt_ids(tokenizer, PROMPTS[2])
    tail = tokenizer(completions[2], add_special_tokens=False)["input_ids"]
    logits = tiny_model(input_ids=torch.tensor([head + tail])).logits[0, len(head) - 1 : -1]
    expected = F.cross_entropy(logits, torch.tensor(tail), reduction="sum")
    assert counts[2] == len(tail)
    assert math.isclose(nll[2], float(expected), rel_tol=1e-4)
    assert math.isclose(perplexity(nll, counts), math.exp(sum(nll) / sum(counts)))
    assert perplexity([0.0], [0]) is None
