"""Reading and writing the residual stream at block outputs (docs/design.md §5.2, §5.3).

Hooks sit on the decoder blocks found by ``modeling.decoder_layers``, so they work for any causal
LM whose blocks form a list, whether a block returns a tensor or a tuple.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack, contextmanager

import torch

from pipeline.mechanism.dialogs import INJECT_MODES
from pipeline.mechanism.modeling import decoder_layers


class _StopForward(Exception):
    """Raised after the deepest read block: the rest of the model is not needed."""


def _hidden(output):
    return output[0] if isinstance(output, tuple) else output


def _replace_hidden(output, hidden):
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


def _check_layers(blocks, layers) -> None:
    bad = [layer for layer in layers if not 0 <= layer < len(blocks)]
    if bad:
        raise ValueError(f"layers {bad} out of range: the model has {len(blocks)} blocks")


def read_activations(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    layers: list[int],
    position_ids: torch.Tensor | None = None,
    stop_early: bool = True,
) -> dict[int, torch.Tensor]:
    """The outputs of blocks ``layers`` (``hidden_states[layer + 1]``), each ``(B, T, D)``.

    The forward stops after the deepest of them (an exception raised in a hook), unless
    ``stop_early`` is off: wrappers that must see every forward finish (FSDP) need it off.
    Gradients flow if the caller enables them.
    """
    if not layers:
        raise ValueError("read_activations needs at least one layer")
    blocks = decoder_layers(model)
    _check_layers(blocks, layers)
    captured: dict[int, torch.Tensor] = {}
    deepest = max(layers)

    def hook_for(layer: int):
        def hook(_module, _args, output):
            captured[layer] = _hidden(output)
            if layer == deepest and stop_early:
                raise _StopForward

        return hook

    handles = [blocks[layer].register_forward_hook(hook_for(layer)) for layer in set(layers)]
    try:
        model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=False,
        )
    except _StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
    if deepest not in captured:
        raise RuntimeError(f"block {deepest} never ran; is it the model's block list?")
    return {layer: captured[layer] for layer in layers}


@contextmanager
def patch_layer(
    model,
    layer: int,
    positions: torch.Tensor,
    values: torch.Tensor,
    norm_match: bool = True,
    mode: str = "replace",
):
    """Write ``values`` (B, N, D) into block ``layer``'s output at ``positions`` (B, N; -1: none).

    ``mode="replace"`` puts each vector in place of the decoder's own residual, ``"add"`` adds it
    to the residual (h + v). With ``norm_match`` each written vector is first rescaled to the norm
    of the decoder's own residual at that position: the direction comes from the target, the
    magnitude from the decoder. A mid-depth residual is far larger than an early one (SmolLM2:
    about 170 at block 15 against 46 at block 0, and thousands on attention-sink tokens), and
    written raw it swamps the decoder (Activation Oracles saw norms blow up 20-100,000x with raw
    replacement). Only forwards whose sequence covers every patched position are changed (the
    prompt, or prefill); single-token decode steps reuse the patched keys and values from the
    cache.
    """
    if mode not in INJECT_MODES:
        raise ValueError(f"inject mode must be one of {INJECT_MODES}, not {mode!r}")
    blocks = decoder_layers(model)
    _check_layers(blocks, [layer])
    if positions.dim() != 2 or values.dim() != 3 or values.shape[:2] != positions.shape:
        raise ValueError(
            f"positions (B, N) and values (B, N, D) disagree: "
            f"{tuple(positions.shape)} vs {tuple(values.shape)}"
        )
    valid = positions >= 0
    rows, cols = valid.nonzero(as_tuple=True)
    seq = positions[rows, cols]
    needed = int(seq.max()) + 1 if seq.numel() else 0

    def hook(_module, _args, output):
        hidden = _hidden(output)
        if seq.numel() == 0 or hidden.shape[1] < needed:
            return None
        if hidden.shape[0] != positions.shape[0]:
            raise ValueError(
                f"patch for batch {positions.shape[0]} used on batch {hidden.shape[0]}"
            )
        new = values[rows, cols].to(device=hidden.device, dtype=hidden.dtype)
        index = (rows.to(hidden.device), seq.to(hidden.device))
        own = hidden[index]
        if norm_match:
            scale = own.norm(dim=-1, keepdim=True) / new.norm(dim=-1, keepdim=True).clamp_min(1e-6)
            new = new * scale
        if mode == "add":
            new = own + new
        return _replace_hidden(output, hidden.index_put(index, new))

    handle = blocks[layer].register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def patch_rows(
    model,
    layers: torch.Tensor,
    positions: torch.Tensor,
    values: torch.Tensor,
    mode: str = "replace",
):
    """:func:`patch_layer` where each written vector goes to its own block: ``layers`` (B, N)
    names it per position, or (B,) per row (a decoder that reads several target layers writes
    each where it was read)."""
    layers = torch.as_tensor(layers, device=positions.device)
    if layers.dim() == 1:
        layers = layers[:, None].expand_as(positions)
    with ExitStack() as stack:
        for layer in sorted(set(layers[positions >= 0].tolist())):
            mine = positions.masked_fill(layers != layer, -1)
            stack.enter_context(patch_layer(model, layer, mine, values, mode=mode))
        yield


def gather(acts: torch.Tensor, positions: list[list[int]]) -> list[torch.Tensor]:
    """Per row ``i`` of ``acts`` (B, T, D), the rows at ``positions[i]``: a list of (n_i, D)."""
    if len(positions) != acts.shape[0]:
        raise ValueError(f"{len(positions)} position lists for a batch of {acts.shape[0]}")
    return [
        acts[i, torch.as_tensor(p, dtype=torch.long, device=acts.device)]
        for i, p in enumerate(positions)
    ]


def pad_batch(
    rows: Sequence[Sequence[int]], pad_id: int, side: str = "right"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows as (ids, attention mask), each (B, longest row), padded on ``side``."""
    length = max(len(row) for row in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(length - len(row), length) if side == "left" else slice(0, len(row))
        ids[i, span] = torch.tensor(list(row), dtype=torch.long)
        mask[i, span] = 1
    return ids, mask
