"""The benchmark's figures: medians per design, the ratios and their targets, and the report."""

from __future__ import annotations

import statistics

DESIGNS = {
    "a": "reference: 2 copies, target full forward on the fly",
    "b": "1 shared copy, target on the fly (early stop)",
    "c": "1 copy, cached activations (bf16)",
}


def median(runs: list[dict], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def _ratio(top: float | None, bottom: float | None) -> float | None:
    return top / bottom if top is not None and bottom else None


TARGETS = {  # ratio name: (comparison, threshold) from issue 7
    "tokens_per_s_c_over_a": (">=", 1.4),
    "peak_memory_b_over_a": ("<=", 0.6),
    "peak_memory_c_over_a": ("<=", 0.6),
    "caching_early_over_full": (">=", 1.6),
}


def summarize(runs: dict[str, list[dict]], caching: list[dict]) -> dict:
    """Medians per design and the issue's ratios, all computed from the measured runs."""
    designs = {}
    for design, items in runs.items():
        designs[design] = {
            "label": DESIGNS[design],
            "tokens_per_s": median(items, "tokens_per_s"),
            "peak_tensor_bytes": median(items, "peak_tensor_bytes"),
            "peak_rss_bytes": median(items, "peak_rss_bytes"),
            "peak_rss_net_bytes": median(items, "peak_rss_net_bytes"),
            "weights_bytes": median(items, "weights_bytes"),
            "model_flops_per_s": median(items, "model_flops_per_s"),
            "mfu": median(items, "mfu"),
        }
    early = statistics.median(c["early_stop"]["tokens_per_s"] for c in caching)
    full = statistics.median(c["full_forward"]["tokens_per_s"] for c in caching)

    def get(design, key):
        return designs.get(design, {}).get(key)

    def over_a(design, key):
        return _ratio(get(design, key), get("a", key))

    ratios = {
        "tokens_per_s_c_over_a": over_a("c", "tokens_per_s"),
        "tokens_per_s_b_over_a": over_a("b", "tokens_per_s"),
        "peak_memory_b_over_a": over_a("b", "peak_tensor_bytes"),
        "peak_memory_c_over_a": over_a("c", "peak_tensor_bytes"),
        "peak_rss_b_over_a": over_a("b", "peak_rss_bytes"),
        "peak_rss_c_over_a": over_a("c", "peak_rss_bytes"),
        "caching_early_over_full": _ratio(early, full),
    }
    targets = {}
    for name, (op, threshold) in TARGETS.items():
        value = ratios[name]
        met = None if value is None else (value >= threshold if op == ">=" else value <= threshold)
        targets[name] = {"value": value, "target": f"{op} {threshold}", "met": met}
    return {
        "designs": designs,
        "caching": {"early_stop_tokens_per_s": early, "full_forward_tokens_per_s": full},
        "ratios": ratios,
        "targets": targets,
    }


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value / 2**20:,.0f}"


def format_report(result: dict) -> str:
    summary, spec = result["summary"], result["spec"]
    checkpointing = "on" if spec.get("gradient_checkpointing") else "off"
    live = "  live memory (fixed mmap threshold)" if spec.get("live_memory") else ""
    lines = [
        f"model: {result['model']}  device: {result['device']}  repeats: {result['repeats']}  "
        f"batch: {spec['batch_size']}  read layer: {result['read_layer']}  "
        f"write layer: {spec['write_layer']}  LoRA blocks: {spec.get('lora_blocks', 'all')}  "
        f"caching layer: {result.get('caching_layer', result['read_layer'])}  "
        f"gradient checkpointing: {checkpointing}{live}",
        _environment_line(result.get("environment") or {}),
        "",
        "| design | tokens/s | peak tensor MiB | peak RSS MiB | RSS MiB above imports "
        "| weights MiB | model TFLOP/s | MFU |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for design, d in summary["designs"].items():
        mfu = "-" if d["mfu"] is None else f"{100 * d['mfu']:.1f}%"
        lines.append(
            f"| ({design}) {d['label']} | {d['tokens_per_s']:.1f} | "
            f"{_mib(d['peak_tensor_bytes'])} | {_mib(d['peak_rss_bytes'])} | "
            f"{_mib(d['peak_rss_net_bytes'])} | "
            f"{_mib(d['weights_bytes'])} | "
            f"{d['model_flops_per_s'] / 1e12:.3f} | {mfu} |"
        )
    c = summary["caching"]
    lines += [
        "",
        f"caching tokens/s: early stop {c['early_stop_tokens_per_s']:.1f}, "
        f"full forward {c['full_forward_tokens_per_s']:.1f}",
        "",
        "| ratio | value | target | met |",
        "| --- | ---: | --- | --- |",
    ]
    for name, t in summary["targets"].items():
        value = "-" if t["value"] is None else f"{t['value']:.2f}"
        lines.append(f"| {name} | {value} | {t['target']} | {t['met']} |")
    for name in ("peak_rss_b_over_a", "peak_rss_c_over_a"):
        if summary["ratios"].get(name) is not None:  # CPU only; the targets use tensor memory
            lines.append(f"| {name} | {summary['ratios'][name]:.2f} | (no target) | - |")
    if result.get("largest_batch"):
        lines += ["", "| design | largest batch |", "| --- | ---: |"]
        for r in result["largest_batch"]:
            capped = " (search cap)" if r["capped"] else ""
            lines.append(f"| ({r['design']}) | {r['largest_batch']}{capped} |")
    if result.get("scaling"):
        lines += [
            "",
            "| examples | read layers | read tokens | cache s | cache MiB | train epoch s |",
            "| ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in result["scaling"]:
            lines.append(
                f"| {r['examples']} | {r['read_layers']} | {r['read_tokens']} | "
                f"{r['cache_seconds']:.2f} | {r['cache_bytes'] / 2**20:.2f} | "
                f"{r['train_epoch_seconds']:.2f} |"
            )
    return "\n".join(lines)


def _environment_line(env: dict) -> str:
    where = env.get("gpu") or f"{env.get('cpu', '?')} ({env.get('cpu_count', '?')} CPUs)"
    cuda = f"  CUDA {env['cuda']}  driver {env.get('driver')}" if env.get("gpu") else ""
    return (
        f"machine: {where}{cuda}  torch {env.get('torch', '?')}  "
        f"transformers {env.get('transformers', '?')}  peft {env.get('peft', '?')}"
    )
