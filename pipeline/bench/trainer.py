"""A benchmark design's decoder training: its models, optimizer and step, and the model FLOPs of
a step (for MFU against the H100's bf16 peak)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pipeline.bench.file_cache import FileCache
from pipeline.bench.workload import (
    BenchSpec,
    Workload,
    bf16_autocast,
    build_workload,
    load_base,
    resolve_read_layer,
    target_activations,
    template_dialogs,
)
from pipeline.mechanism.decoder import answer_loss, collate
from pipeline.mechanism.lora import (
    adapter_blocks,
    add_lora,
    enable_gradient_checkpointing,
    trainable_parameters,
)
from pipeline.mechanism.modeling import decoder_layers

H100_BF16_PEAK_FLOPS = 989e12


@dataclass
class Trainer:
    """One design's models and optimizer; ``step`` runs one decoder-training step."""

    design: str
    decoder: Any
    target: Any
    cache: FileCache | None
    work: Workload
    spec: BenchSpec
    layer: int
    pad_id: int
    optimizer: Any = None

    def __post_init__(self):
        self.decoder.train()
        self.optimizer = torch.optim.AdamW(trainable_parameters(self.decoder), lr=self.spec.lr)

    def activations(self, indices: list[int], layer: int) -> list[torch.Tensor]:
        if self.design == "c":
            return [self.cache.get(self.work.ids[i], layer) for i in indices]
        reads = [self.work.reads[i] for i in indices]
        if self.design == "a":
            early = self.spec.reference_target == "early"
            return target_activations(self.target, reads, layer, self.pad_id, self.spec, early)
        self.decoder.eval()  # the target runs without the adapter's dropout
        with self.decoder.disable_adapter():
            acts = target_activations(self.decoder, reads, layer, self.pad_id, self.spec, True)
        self.decoder.train()
        return acts

    def step(self, indices: list[int], layer: int | None = None) -> int:
        """One optimizer step on ``indices``; returns the decoder tokens it trained on."""
        layer = self.layer if layer is None else layer
        acts = self.activations(indices, layer)
        batch = collate([self.work.examples[i] for i in indices], acts, self.pad_id)
        batch = batch.to(self.spec.device)
        with bf16_autocast(self.spec):
            loss = answer_loss(self.decoder, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable_parameters(self.decoder), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return int(batch.attention_mask.sum())


def with_adapter(base, spec: BenchSpec):
    """The decoder: ``base`` with the LoRA adapter the spec describes (alpha = 2r)."""
    layers = adapter_blocks(spec.lora_blocks, spec.write_layer, len(decoder_layers(base)))
    return add_lora(
        base,
        r=spec.lora_r,
        alpha=2 * spec.lora_r,
        dropout=spec.lora_dropout,
        seed=spec.seed,
        layers=layers,
    )


def make_trainer(design: str, spec: BenchSpec, cache_path: Path | None, work=None) -> Trainer:
    base, tokenizer = load_base(spec)
    layer = resolve_read_layer(spec, len(decoder_layers(base)))
    target = load_base(spec)[0] if design == "a" else None  # the reference's second copy
    if work is None:
        dialogs = template_dialogs(spec.templates_dir, spec.examples, spec.seed)
        work = build_workload(tokenizer, dialogs, spec.batch_size, spec.seed, spec.write_layer)
    decoder = with_adapter(base, spec)
    if spec.gradient_checkpointing:
        enable_gradient_checkpointing(decoder)
    cache = FileCache(cache_path) if design == "c" else None
    return Trainer(design, decoder, target, cache, work, spec, layer, tokenizer.pad_token_id)


def model_flops(trainer: Trainer, indices: list[int]) -> float:
    """FLOPs of one step: 2·N·tokens for the decoder's forward and as much again for the
    input-gradient backward through the frozen base blocks that have adapters (all, or from the
    write block up), attention (4·L·d·s² per sequence forward, twice that backward) and the
    vocabulary projection where ``answer_loss`` keeps logits; plus the target's forward for (a)
    and (b)."""
    config = trainer.decoder.config.get_text_config()
    n_layers, d, vocab = config.num_hidden_layers, config.hidden_size, config.vocab_size
    block = sum(
        p.numel()
        for n, p in decoder_layers(trainer.decoder)[0].named_parameters()
        if "lora_" not in n
    )
    examples = [trainer.work.examples[i] for i in indices]
    tokens = sum(len(ex.input_ids) for ex in examples)
    squares = sum(len(ex.input_ids) ** 2 for ex in examples)
    kept = {j for ex in examples for j, t in enumerate(ex.labels[1:]) if t != -100}
    from_write = trainer.spec.lora_blocks == "from_write"
    backward = n_layers - trainer.spec.write_layer if from_write else n_layers  # blocks
    flops = 2 * (n_layers + backward) * block * tokens + 4 * (n_layers + 2 * backward) * d * squares
    flops += 4 * vocab * d * len(examples) * len(kept)
    if trainer.design != "c":
        full = trainer.design == "a" and trainer.spec.reference_target == "full"
        depth = n_layers if full else trainer.layer + 1
        lengths = [len(trainer.work.reads[i].input_ids) for i in indices]
        flops += 2 * depth * block * sum(lengths) + 4 * depth * d * sum(n * n for n in lengths)
        flops += 2 * vocab * d * sum(lengths) if full else 0
    return float(flops)
