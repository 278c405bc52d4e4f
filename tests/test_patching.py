"""Read hooks stop early and match a full forward; write hooks replace exactly the given rows."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pipeline.mechanism.modeling import decoder_layers
from pipeline.mechanism.patching import gather, patch_layer, read_activations


def batch_of(tokenizer, texts):
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    length = max(map(len, ids))
    input_ids = torch.full((len(ids), length), tokenizer.pad_token_id)
    mask = torch.zeros((len(ids), length), dtype=torch.long)
    for i, row in enumerate(ids):
        input_ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return input_ids, mask


TEXTS = ["The quick brown fox jumps over the lazy dog.", "Hello there, sailor!"]


@torch.no_grad()
def test_early_stop_matches_full_forward(tiny_model, tokenizer):
    input_ids, mask = batch_of(tokenizer, TEXTS)
    full = tiny_model(input_ids=input_ids, attention_mask=mask, output_hidden_states=True)
    calls = []
    blocks = decoder_layers(tiny_model)
    handle = blocks[-1].register_forward_hook(lambda *_: calls.append(1))
    try:
        acts = read_activations(tiny_model, input_ids, mask, [2, 0])
    finally:
        handle.remove()
    assert calls == []  # the blocks after the deepest read layer never ran
    assert list(acts) == [2, 0]
    for layer in (0, 2):
        real = mask.bool()
        torch.testing.assert_close(acts[layer][real], full.hidden_states[layer + 1][real])
    # the hooks are gone: a later full forward is unaffected
    again = tiny_model(input_ids=input_ids, attention_mask=mask)
    torch.testing.assert_close(again.logits, full.logits)


@torch.no_grad()
def test_read_with_position_ids(tiny_model, tokenizer):
    input_ids, mask = batch_of(tokenizer, TEXTS[:1])
    positions = torch.arange(input_ids.shape[1])[None] * 3  # RoPE sees only relative gaps
    acts = read_activations(tiny_model, input_ids, mask, [1], position_ids=positions)
    full = tiny_model(
        input_ids=input_ids, attention_mask=mask, position_ids=positions, output_hidden_states=True
    )
    torch.testing.assert_close(acts[1], full.hidden_states[2])
    plain = read_activations(tiny_model, input_ids, mask, [1])
    assert not torch.allclose(acts[1], plain[1])


def test_layer_out_of_range(tiny_model, tokenizer):
    input_ids, mask = batch_of(tokenizer, TEXTS)
    with pytest.raises(ValueError, match="out of range"):
        read_activations(tiny_model, input_ids, mask, [4])


@torch.no_grad()
def test_patch_replaces_only_given_positions(tiny_model, tokenizer):
    input_ids, mask = batch_of(tokenizer, TEXTS)
    before = read_activations(tiny_model, input_ids, mask, [1, 3])
    positions = torch.tensor([[2, 4, 5], [1, -1, -1]])
    values = torch.randn(2, 3, before[1].shape[-1])
    with patch_layer(tiny_model, 1, positions, values, norm_match=False):
        after = read_activations(tiny_model, input_ids, mask, [1, 3])
    expected = before[1].clone()
    expected[0, [2, 4, 5]] = values[0]
    expected[1, 1] = values[1, 0]
    torch.testing.assert_close(after[1], expected)
    # later layers change from the first patched position on, not before it
    torch.testing.assert_close(after[3][0, :2], before[3][0, :2])
    assert not torch.allclose(after[3][0, 2:], before[3][0, 2:])
    torch.testing.assert_close(after[3][1, :1], before[3][1, :1])
    # removed on exit
    again = read_activations(tiny_model, input_ids, mask, [1])
    torch.testing.assert_close(again[1], before[1])


@torch.no_grad()
def test_norm_matched_patch_keeps_the_decoders_norm_and_the_targets_direction(
    tiny_model, tokenizer
):
    input_ids, mask = batch_of(tokenizer, TEXTS)
    before = read_activations(tiny_model, input_ids, mask, [1])[1]
    positions = torch.tensor([[2, 4], [1, -1]])
    values = 100 * torch.randn(2, 2, before.shape[-1])
    with patch_layer(tiny_model, 1, positions, values):
        after = read_activations(tiny_model, input_ids, mask, [1])[1]
    for row, col, k in ((0, 2, 0), (0, 4, 1), (1, 1, 0)):
        written = after[row, col]
        torch.testing.assert_close(written.norm(), before[row, col].norm())
        cosine = torch.nn.functional.cosine_similarity(written, values[row, k], dim=0)
        assert cosine > 0.9999


@torch.no_grad()
def test_patch_skips_forwards_shorter_than_the_placeholders(tiny_model, tokenizer):
    input_ids, mask = batch_of(tokenizer, TEXTS[:1])
    short = input_ids[:, :3]
    before = read_activations(tiny_model, short, mask[:, :3], [1])
    positions = torch.tensor([[5, 6]])
    with patch_layer(tiny_model, 1, positions, torch.randn(1, 2, before[1].shape[-1])):
        after = read_activations(tiny_model, short, mask[:, :3], [1])
    torch.testing.assert_close(after[1], before[1])


def test_gradients_reach_patched_values(tiny_model, tokenizer):
    input_ids, mask = batch_of(tokenizer, TEXTS[:1])
    values = torch.randn(1, 2, tiny_model.config.hidden_size, requires_grad=True)
    with patch_layer(tiny_model, 0, torch.tensor([[1, 3]]), values):
        logits = tiny_model(input_ids=input_ids, attention_mask=mask).logits
    logits[0, -1].logsumexp(-1).backward()
    assert values.grad is not None and values.grad.abs().sum() > 0


def test_bad_shapes_rejected(tiny_model):
    with pytest.raises(ValueError, match="disagree"):
        with patch_layer(tiny_model, 0, torch.tensor([[1, 2]]), torch.zeros(1, 3, 64)):
            pass


class TupleBlock(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.linear = nn.Linear(dim, dim)

    def forward(self, hidden):
        return (hidden + torch.tanh(self.linear(hidden)), "extra")


class TupleModel(nn.Module):
    """A toy LM whose blocks return tuples, as older transformers blocks do."""

    def __init__(self, vocab=11, dim=8, depth=3):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.layers = nn.ModuleList(TupleBlock(dim) for _ in range(depth))

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=False):
        hidden = self.embed(input_ids)
        states = [hidden]
        for block in self.layers:
            hidden, extra = block(hidden)
            assert extra == "extra"
            states.append(hidden)
        return states


@torch.no_grad()
def test_tuple_outputs():
    torch.manual_seed(0)
    model = TupleModel()
    ids = torch.tensor([[1, 2, 3, 4]])
    full = model(ids)
    acts = read_activations(model, ids, torch.ones_like(ids), [1])
    torch.testing.assert_close(acts[1], full[2])
    values = torch.randn(1, 1, 8)
    with patch_layer(model, 1, torch.tensor([[2]]), values, norm_match=False):
        patched = model(ids)
    torch.testing.assert_close(patched[2][0, 2], values[0, 0])
    torch.testing.assert_close(patched[2][0, :2], full[2][0, :2])


def test_gather():
    acts = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 5, 3)
    out = gather(acts, [[0, 4], [2]])
    torch.testing.assert_close(out[0], acts[0, [0, 4]])
    torch.testing.assert_close(out[1], acts[1, [2]])
    with pytest.raises(ValueError):
        gather(acts, [[0]])


@torch.no_grad()
def test_full_forward_option(tiny_model, tokenizer):
    input_ids, mask = batch_of(tokenizer, TEXTS)
    calls = []
    handle = decoder_layers(tiny_model)[-1].register_forward_hook(lambda *_: calls.append(1))
    try:
        full = read_activations(tiny_model, input_ids, mask, [1], stop_early=False)
    finally:
        handle.remove()
    assert calls == [1]
    torch.testing.assert_close(full[1], read_activations(tiny_model, input_ids, mask, [1])[1])


@torch.no_grad()
def test_norm_matched_addition_adds_a_vector_of_the_residuals_norm(tiny_model, tokenizer):
    input_ids, mask = batch_of(tokenizer, TEXTS[:1])
    before = read_activations(tiny_model, input_ids, mask, [1], stop_early=False)[1]
    values = torch.randn(1, 2, before.shape[-1]) * 50
    positions = torch.tensor([[1, 3]])
    seen = {}
    blocks = decoder_layers(tiny_model)
    with patch_layer(tiny_model, 1, positions, values, mode="add"):
        # registered after the patch, so it sees the patched output
        handle = blocks[1].register_forward_hook(lambda _m, _a, out: seen.update(h=out))
        try:
            tiny_model(input_ids=input_ids, attention_mask=mask)
        finally:
            handle.remove()
    hidden = seen["h"][0] if isinstance(seen["h"], tuple) else seen["h"]
    for j, pos in enumerate([1, 3]):
        own = before[0, pos]
        added = hidden[0, pos] - own
        # h + |h| v/|v|: the added part points along v with the residual's own norm
        torch.testing.assert_close(added.norm(), own.norm(), rtol=1e-4, atol=1e-4)
        cos = torch.nn.functional.cosine_similarity(added, values[0, j], dim=0)
        assert float(cos) > 0.9999
    untouched = [p for p in range(input_ids.shape[1]) if p not in (1, 3)]
    torch.testing.assert_close(hidden[0, untouched], before[0, untouched])
    with pytest.raises(ValueError, match="inject mode"):
        with patch_layer(tiny_model, 1, positions, values, mode="sum"):
            pass


@torch.no_grad()
def test_patch_rows_writes_each_row_at_its_own_block(tiny_model, tokenizer):
    from pipeline.mechanism.patching import patch_rows

    input_ids, mask = batch_of(tokenizer, [TEXTS[0], TEXTS[0]])
    d = tiny_model.config.hidden_size
    values = torch.randn(2, 1, d)
    positions = torch.tensor([[2], [2]])
    layers = torch.tensor([0, 2])
    with patch_rows(tiny_model, layers, positions, values):
        mixed = tiny_model(input_ids=input_ids, attention_mask=mask).logits
    for row, layer in enumerate((0, 2)):
        with patch_layer(tiny_model, layer, positions[row : row + 1], values[row : row + 1]):
            alone = tiny_model(
                input_ids=input_ids[row : row + 1], attention_mask=mask[row : row + 1]
            ).logits
        torch.testing.assert_close(mixed[row], alone[0], rtol=1e-4, atol=1e-4)
    # the two rows read the same text and got the same vector: only the block differs
    assert not torch.allclose(mixed[0], mixed[1])
