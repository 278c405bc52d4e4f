"""The decoder's LoRA adapter as saved: the same training publishes the same files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SAVE = """
import sys
from pathlib import Path
from transformers import AutoModelForCausalLM
from pipeline.mechanism.lora import add_lora, save_adapter
model = add_lora(AutoModelForCausalLM.from_pretrained(sys.argv[1]), r=2, seed=0)
save_adapter(model, Path(sys.argv[2]))
"""


def _save(model_dir: Path, out: Path, hash_seed: int) -> bytes:
    env = {**os.environ, "PYTHONHASHSEED": str(hash_seed), "HF_HUB_OFFLINE": "1"}
    subprocess.run(
        [sys.executable, "-c", SAVE, str(model_dir), str(out)],
        check=True,
        env=env,
        cwd=Path(__file__).parents[1],
    )
    return (out / "adapter_config.json").read_bytes()


def test_the_adapter_config_is_the_same_file_whatever_the_hash_seed(tiny_model_dir, tmp_path):
    # PEFT writes target_modules from a set, in the order of the interpreter's string hashes.
    configs = {seed: _save(tiny_model_dir, tmp_path / f"seed{seed}", seed) for seed in (1, 2, 3)}
    assert len(set(configs.values())) == 1
    targets = json.loads(configs[1])["target_modules"]
    assert targets == sorted(targets) and len(targets) == 7
    weights = {(tmp_path / f"seed{s}" / "adapter_model.safetensors").read_bytes() for s in configs}
    assert len(weights) == 1
