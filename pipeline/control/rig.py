"""One base model carrying two LoRA adapters: the frozen decoder and the trainable ``steer``.

Switching adapters inside one graph is sound because PEFT picks the active adapter when a layer
runs, and autograd has by then recorded which weights it used. What is not sound is PEFT's
``set_adapter`` default: it marks the inactive adapter ``requires_grad=False``, and autograd then
silently drops the gradient of a weight frozen between forward and backward (the steer adapter
would get none, the decoder one would). :func:`use_adapter` therefore switches with
``inference_mode=True`` and keeps ``steer`` the only trainable weights throughout.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pipeline.control import steering
from pipeline.mechanism.decoder import answer_loss, collate
from pipeline.mechanism.decoder_prompt import build_decoder_example
from pipeline.mechanism.decoder_settings import DecoderSettings
from pipeline.mechanism.dialogs import TokenizedRead, tokenize_read_dialog
from pipeline.mechanism.lora import DEFAULT_TARGETS
from pipeline.mechanism.modeling import decoder_layers
from pipeline.mechanism.patching import gather, pad_batch, read_activations

STEER, DECODER = "steer", "decoder"
MODES = ("unsteered", "steered", "mean_diff")


def use_adapter(model, name: str) -> None:
    """Activate one adapter without touching which weights are trainable (only ``steer``)."""
    model.set_adapter(name, inference_mode=True)
    model.set_requires_grad(STEER, True)


def attach_adapters(base, adapter_dir: Path, read_layer: int, r: int, alpha: int, seed: int = 0):
    """``base`` + the frozen decoder adapter + a fresh steer adapter on blocks 0..read_layer."""
    from peft import LoraConfig, PeftModel

    model = PeftModel.from_pretrained(base, str(adapter_dir), DECODER, is_trainable=False)
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    targets = [t for t in DEFAULT_TARGETS if t in names]
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=0.0,
        target_modules=targets,
        layers_to_transform=list(range(read_layer + 1)),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model.add_adapter(STEER, config)
    for param in model.parameters():
        param.requires_grad_(False)
    use_adapter(model, STEER)
    return model.eval()


def steer_parameters(model) -> list[torch.nn.Parameter]:
    return [p for n, p in model.named_parameters() if f".{STEER}." in n]


class _Stop(Exception):
    pass


def read_isolated(model, ids, mask, layers: list[int]) -> dict[int, torch.Tensor]:
    """Block outputs with each block's input detached, so layer l's loss trains block l only."""
    blocks, captured, deepest = decoder_layers(model), {}, max(layers)

    def hook_for(layer):
        def hook(_module, _args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            captured[layer] = hidden
            if layer == deepest:
                raise _Stop
            return (hidden.detach(), *output[1:]) if isinstance(output, tuple) else hidden.detach()

        return hook

    handles = [blocks[layer].register_forward_hook(hook_for(layer)) for layer in layers]
    try:
        model(input_ids=ids, attention_mask=mask, use_cache=False)
    except _Stop:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return captured


@dataclass
class Rig:
    """The model carrying both adapters, and what every target or decoder forward needs."""

    model: Any
    tokenizer: Any
    settings: DecoderSettings
    device: torch.device = torch.device("cpu")
    bf16: bool = False

    def examples(self, prompts: list[str], qa: list[dict]):
        """Read dialogs of user prompts and, per prompt, one decoder example per QA pair."""
        messages = [[{"role": "user", "content": p}] for p in prompts]
        reads = [
            tokenize_read_dialog(self.tokenizer, m, 0, self.settings.positions) for m in messages
        ]
        examples = [
            [build_decoder_example(self.tokenizer, r.read_positions, x["question"], x["answer"],
                                   self.settings.align_positions, self.settings.at()) for x in qa]
            for r in reads
        ]  # fmt: skip
        return reads, examples

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    @contextlib.contextmanager
    def target(self, mode: str, vector: torch.Tensor | None = None):
        """Run the target unsteered, steered (steer adapter) or with a vector added."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        if mode == "steered":
            use_adapter(self.model, STEER)
            with self.autocast():
                yield
            return
        with self.model.disable_adapter(), self.autocast(), contextlib.ExitStack() as stack:
            if mode == "mean_diff":
                stack.enter_context(
                    steering.add_vector(self.model, self.settings.read_layer, vector)
                )
            yield

    def read(self, reads: list[TokenizedRead], layers: list[int], isolate: bool = False):
        """Per layer, the (n_i, D) activations at each dialog's read positions."""
        ids, mask = pad_batch([r.input_ids for r in reads], self.tokenizer.pad_token_id)
        ids, mask = ids.to(self.device), mask.to(self.device)
        read = read_isolated if isolate else read_activations
        acts = read(self.model, ids, mask, layers)
        return {layer: gather(acts[layer], [r.read_positions for r in reads]) for layer in layers}

    def decoder_acts(self, reads: list[TokenizedRead], isolate: bool = False):
        """Per dialog, what the decoder reads: its read layer's activations, or every read
        layer's one group after another (a decoder reading all its layers at once)."""
        layers = list(self.settings.layers_read)
        acts = self.read(reads, layers, isolate)
        return [torch.cat([acts[layer][i] for layer in layers]) for i in range(len(reads))]

    def decoder_loss(self, examples, acts, reduction: str = "mean"):
        """The frozen decoder's answer loss with ``acts`` written at its placeholders."""
        use_adapter(self.model, DECODER)
        batch = collate(examples, list(acts), self.tokenizer.pad_token_id).to(self.device)
        with self.autocast():
            return answer_loss(self.model, batch, inject=self.settings.inject, reduction=reduction)
