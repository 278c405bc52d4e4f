"""Patched decoder forwards: identity round trip, answer loss, LoRA gradients, cached generation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import build_tiny_model

from pipeline.mechanism.decoder import answer_loss, collate, decoder_logits, generate, generate_ids
from pipeline.mechanism.decoder_prompt import ReadAt, build_decoder_example, end_of_turn_ids
from pipeline.mechanism.dialogs import tokenize_read_dialog
from pipeline.mechanism.modeling import decoder_layers
from pipeline.mechanism.patching import gather, patch_layer, read_activations

DIALOGS = [
    (
        [
            {"role": "system", "content": "You are a pirate."},
            {"role": "user", "content": "How is the sea today?"},
        ],
        1,
    ),
    (
        [
            {"role": "user", "content": "Talk like a robot."},
            {"role": "assistant", "content": "Beep. Affirmative."},
            {"role": "user", "content": "What is two plus two?"},
            {"role": "assistant", "content": "Four, human."},
        ],
        2,
    ),
    ([{"role": "user", "content": "Hi!"}], 0),
]
QA = [
    ("Who is the assistant?", "A pirate."),
    ("What persona?", "A robot that beeps."),
    ("Anything odd?", "No."),
]


def examples(tokenizer, answers=True, align=True, write_layer=0):
    reads = [tokenize_read_dialog(tokenizer, m, k) for m, k in DIALOGS]
    at = ReadAt(read=1, write=write_layer)
    exs = [
        build_decoder_example(tokenizer, r.read_positions, q, a if answers else None, align, at)
        for r, (q, a) in zip(reads, QA, strict=True)
    ]
    return reads, exs


def target_activations(model, tokenizer, reads, layer):
    """Read activations of each dialog run alone (no padding involved)."""
    out = []
    for read in reads:
        ids = torch.tensor([read.input_ids])
        acts = read_activations(model, ids, torch.ones_like(ids), [layer])[layer]
        out.append(gather(acts, [read.read_positions])[0])
    return out


@pytest.mark.parametrize("write_layer", [0, 2])
@pytest.mark.parametrize("side", ["right", "left"])
@torch.no_grad()
def test_writing_own_outputs_back_leaves_logits_unchanged(tiny_model, tokenizer, write_layer, side):
    reads, exs = examples(tokenizer, write_layer=write_layer)
    dim = tiny_model.config.hidden_size
    dummy = [torch.zeros(len(ex.placeholder_positions), dim) for ex in exs]
    batch = collate(exs, dummy, tokenizer.pad_token_id, padding_side=side)
    own = read_activations(
        tiny_model,
        batch.input_ids,
        batch.attention_mask,
        [write_layer],
        position_ids=batch.position_ids,
    )[write_layer]
    rows = [[p for p in row.tolist() if p >= 0] for row in batch.patch_positions]
    batch = collate(exs, [a for a in gather(own, rows)], tokenizer.pad_token_id, side)
    plain = tiny_model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
    ).logits
    patched = decoder_logits(tiny_model, batch)
    real = batch.attention_mask.bool()
    torch.testing.assert_close(patched[real], plain[real])
    # and the patch does act: other values change the logits after the placeholders
    other = collate(
        exs, target_activations(tiny_model, tokenizer, reads, 1), tokenizer.pad_token_id, side
    )
    assert not torch.allclose(decoder_logits(tiny_model, other)[real], plain[real])


def test_collate_layout(tokenizer):
    _, exs = examples(tokenizer)
    acts = [torch.randn(len(ex.placeholder_positions), 8) for ex in exs]
    for side in ("right", "left"):
        batch = collate(exs, acts, tokenizer.pad_token_id, padding_side=side)
        for i, ex in enumerate(exs):
            real = batch.attention_mask[i].bool()
            assert batch.input_ids[i][real].tolist() == ex.input_ids
            assert batch.position_ids[i][real].tolist() == ex.position_ids
            assert batch.labels[i][real].tolist() == ex.labels
            n = len(ex.placeholder_positions)
            pos = batch.patch_positions[i]
            assert (pos[n:] == -1).all()
            assert batch.input_ids[i, pos[:n]].tolist() == [
                ex.input_ids[p] for p in ex.placeholder_positions
            ]
            torch.testing.assert_close(batch.patch_values[i, :n], acts[i])
    with pytest.raises(ValueError, match="placeholders"):
        collate(exs, [a[:-1] for a in acts], tokenizer.pad_token_id)


@torch.no_grad()
def test_answer_loss_matches_manual_cross_entropy(tiny_model, tokenizer):
    reads, exs = examples(tokenizer)
    acts = target_activations(tiny_model, tokenizer, reads, 1)
    batch = collate(exs, acts, tokenizer.pad_token_id)
    logits = decoder_logits(tiny_model, batch)
    manual = F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]),
        batch.labels[:, 1:].reshape(-1),
        ignore_index=-100,
    )
    loss = answer_loss(tiny_model, batch)
    torch.testing.assert_close(loss, manual, rtol=1e-5, atol=1e-5)
    nll, counts = answer_loss(tiny_model, batch, reduction="none")
    assert counts.tolist() == [sum(t != -100 for t in ex.labels) for ex in exs]
    torch.testing.assert_close(nll.sum() / counts.sum(), loss)
    # per-example values do not depend on padding side or batch company
    left = collate(exs, acts, tokenizer.pad_token_id, padding_side="left")
    torch.testing.assert_close(
        answer_loss(tiny_model, left, reduction="none")[0], nll, rtol=1e-4, atol=1e-4
    )
    alone = collate(exs[1:2], acts[1:2], tokenizer.pad_token_id)
    torch.testing.assert_close(
        answer_loss(tiny_model, alone, reduction="none")[0], nll[1:2], rtol=1e-4, atol=1e-4
    )


def lora(model):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=4,
        lora_alpha=8,
        lora_dropout=0.0,
        init_lora_weights=False,
        target_modules=[
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ],
    )
    return get_peft_model(model, config)


def check_grads(model):
    lora_params = [(n, p) for n, p in model.named_parameters() if "lora_" in n]
    assert lora_params
    for name, param in lora_params:
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    for name, param in model.named_parameters():
        if "lora_" not in name:
            assert param.grad is None, name


@pytest.mark.parametrize("source", ["fixed", "same_model_no_grad", "same_model_with_grad"])
def test_gradients_reach_lora_and_no_base_weight(tiny_model, tokenizer, source):
    model = lora(tiny_model)
    model.train()
    reads, exs = examples(tokenizer)
    if source == "fixed":
        acts = [torch.randn(len(r.read_positions), model.config.hidden_size) for r in reads]
    else:
        with model.disable_adapter(), torch.set_grad_enabled(source == "same_model_with_grad"):
            acts = target_activations(model, tokenizer, reads, 1)
        # the target path holds no trainable parameter: nothing to differentiate there
        assert not any(a.requires_grad for a in acts)
    batch = collate(exs, acts, tokenizer.pad_token_id)
    answer_loss(model, batch).backward()
    check_grads(model)


def test_adapter_changes_decoder_not_target(tiny_model, tokenizer):
    reads, _ = examples(tokenizer)
    ids = torch.tensor([reads[0].input_ids])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        before = read_activations(tiny_model, ids, mask, [1])[1]
        model = lora(tiny_model)
        with model.disable_adapter():
            target = read_activations(model, ids, mask, [1])[1]
        decoder = read_activations(model, ids, mask, [1])[1]
    torch.testing.assert_close(target, before)
    assert not torch.allclose(decoder, target)


def sharpen(model, seed=1):
    """Larger random weights: the default init makes greedy decoding repeat one token."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.normal_(0, 0.3)
    return model


def full_recompute_greedy(model, batch, write_layer, steps):
    """Reference: every step reruns the whole sequence with the patch on, no cache."""
    ids, mask, pos = batch.input_ids, batch.attention_mask, batch.position_ids
    out = []
    for _ in range(steps):
        with patch_layer(model, write_layer, batch.patch_positions, batch.patch_values):
            logits = model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=pos,
                use_cache=False,
                logits_to_keep=1,
            ).logits
        token = logits[:, -1].argmax(-1)
        out.append(token)
        ids = torch.cat([ids, token[:, None]], 1)
        mask = torch.cat([mask, torch.ones_like(token)[:, None]], 1)
        pos = torch.cat([pos, pos[:, -1:] + 1], 1)
    return torch.stack(out, 1).tolist()


@pytest.mark.parametrize("write_layer", [0, 2])
@torch.no_grad()
def test_cached_generation_equals_full_recompute(tiny_model, tokenizer, write_layer):
    sharpen(tiny_model)
    reads, exs = examples(tokenizer, answers=False, write_layer=write_layer)
    acts = target_activations(tiny_model, tokenizer, reads, 1)
    batch = collate(exs, acts, tokenizer.pad_token_id, padding_side="left")
    steps = 8
    got = generate_ids(tiny_model, batch, stop_ids=[-5], pad_id=0, max_new_tokens=steps)
    want = full_recompute_greedy(tiny_model, batch, write_layer, steps)
    assert got == want
    assert len({token for row in got for token in row}) > 3  # not one repeated token
    # the patch matters: other activations give other continuations
    shuffled = collate(exs, [a.flip(0) * 3 for a in acts], tokenizer.pad_token_id, "left")
    assert generate_ids(tiny_model, shuffled, [-5], 0, steps) != got
    # batched generation equals one prompt at a time
    single = collate(exs[2:], acts[2:], tokenizer.pad_token_id, "left")
    assert generate_ids(tiny_model, single, [-5], 0, steps) == got[2:]


@torch.no_grad()
def test_generate_stops_and_decodes(tiny_model, tokenizer):
    sharpen(tiny_model)
    reads, exs = examples(tokenizer, answers=False)
    acts = target_activations(tiny_model, tokenizer, reads, 1)
    batch = collate(exs, acts, tokenizer.pad_token_id, padding_side="left")
    rows = generate_ids(tiny_model, batch, stop_ids=[-5], pad_id=0, max_new_tokens=6)
    assert [len(r) for r in rows] == [6, 6, 6]
    first = rows[0][2]
    cut = rows[0].index(first) + 1
    stopped = generate_ids(tiny_model, batch, stop_ids=[first], pad_id=0, max_new_tokens=6)
    assert stopped[0] == rows[0][:cut]
    stops = end_of_turn_ids(tokenizer)
    real = generate_ids(tiny_model, batch, stops, tokenizer.pad_token_id, max_new_tokens=6)
    texts = generate(tiny_model, tokenizer, batch, max_new_tokens=6)
    assert texts == [
        tokenizer.decode([t for t in r if t not in stops], skip_special_tokens=True).strip()
        for r in real
    ]
    with pytest.raises(ValueError, match="left-padded"):
        generate(tiny_model, tokenizer, collate(exs, acts, tokenizer.pad_token_id, "right"))


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("write_layer", [0, 1])
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(tokenizer, family, write_layer):
    from pipeline.mechanism.lora import enable_gradient_checkpointing

    reads, exs = examples(tokenizer, write_layer=write_layer)
    grads, losses = [], []
    for checkpointing in (False, True):
        model = build_tiny_model(family, tokenizer)
        torch.manual_seed(0)
        model = lora(model)
        if checkpointing:
            enable_gradient_checkpointing(model)
        model.train()
        with model.disable_adapter(), torch.no_grad():
            acts = target_activations(model, tokenizer, reads, 2)
        calls = []
        # Checkpointing wraps a block's forward (its own hooks stay outside) and may stop the
        # recomputation inside the MLP: count calls into the last block's MLP.
        mlp = decoder_layers(model)[-1].mlp
        handle = mlp.register_forward_pre_hook(lambda *_, calls=calls: calls.append(1))
        loss = answer_loss(model, collate(exs, acts, tokenizer.pad_token_id))
        loss.backward()
        handle.remove()
        # The last block runs again in the backward pass exactly when checkpointing is on.
        assert len(calls) == (2 if checkpointing else 1)
        losses.append(loss.detach())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    torch.testing.assert_close(losses[1], losses[0])
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_lora_from_the_write_block_up_stops_the_backward_there(tokenizer, checkpointing):
    from pipeline.mechanism.lora import add_lora, enable_gradient_checkpointing

    reads, exs = examples(tokenizer, write_layer=1)
    model = add_lora(build_tiny_model("llama", tokenizer), r=4, dropout=0.0, layers=[1])
    if checkpointing:
        enable_gradient_checkpointing(model)
    blocks = decoder_layers(model)
    assert {
        int(n.split("layers.")[1].split(".")[0])
        for n, _ in model.named_parameters()
        if "lora_" in n
    } == {1}
    model.train()
    with model.disable_adapter(), torch.no_grad():
        acts = target_activations(model, tokenizer, reads, 2)
    reached, mlp_calls = [], []
    for i, block in enumerate(blocks):
        block.register_full_backward_hook(lambda *_, i=i: reached.append(i))
        block.mlp.register_forward_pre_hook(lambda *_, i=i: mlp_calls.append(i))
    answer_loss(model, collate(exs, acts, tokenizer.pad_token_id)).backward()
    assert 0 not in reached and 1 in reached
    # Checkpointing recomputes the adapted block in the backward pass, never the one below it.
    assert mlp_calls.count(0) == 1 and mlp_calls.count(1) == (2 if checkpointing else 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("write_layer", [0, 3])
def test_checkpointing_recomputes_the_write_block_without_its_patch_hook(
    tokenizer, write_layer, dtype
):
    """The patch hook is gone by the backward, which recomputes the write block: the checkpoint
    must hold the block's forward only. transformers < 5.23 checkpointed the block's hooks too,
    and the recompute then failed ("A different number of tensors was saved")."""
    from pipeline.mechanism.lora import enable_gradient_checkpointing

    reads, exs = examples(tokenizer, write_layer=write_layer)
    model = lora(build_tiny_model("llama", tokenizer).to(dtype))
    enable_gradient_checkpointing(model)
    enable_gradient_checkpointing(model)  # idempotent: one checkpoint per block
    model.train()
    with model.disable_adapter(), torch.no_grad():
        acts = target_activations(model, tokenizer, reads, 2)
    block = decoder_layers(model)[write_layer]
    hooks, mlp_calls = [], []
    block.register_forward_hook(lambda *_: hooks.append(1))
    block.mlp.register_forward_pre_hook(lambda *_: mlp_calls.append(1))
    batch = collate(exs, acts, tokenizer.pad_token_id)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        loss = answer_loss(model, batch)
    loss.backward()
    assert len(mlp_calls) == 2  # the block ran again in the backward pass...
    assert len(hooks) == 1  # ...but not its hooks
    grads = [p.grad for n, p in block.named_parameters() if "lora_" in n]
    assert grads and all(g is not None and bool(g.abs().sum() > 0) for g in grads)


def test_the_kv_cache_goes_under_the_name_the_model_takes():
    from pipeline.mechanism.modeling import cache_argument

    class Renamed(torch.nn.Module):  # transformers from 5.2x
        def forward(self, input_ids, cache=None, past_key_values=None): ...

    class Older(torch.nn.Module):  # transformers 5.17, the GPU machines' version
        def forward(self, input_ids, past_key_values=None): ...

    assert cache_argument(Renamed()) == "cache" and cache_argument(Older()) == "past_key_values"
