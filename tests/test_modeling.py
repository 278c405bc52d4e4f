"""Loading a prepared model, and where it runs."""

from __future__ import annotations

import torch

from pipeline.mechanism.modeling import load_model, resolve_device


def test_a_device_setting_resolves_to_one_device():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("cuda", local_rank=3) == torch.device("cuda", 3)  # this rank's GPU
    assert resolve_device("cuda:1", local_rank=3) == torch.device("cuda", 1)  # named: kept
    given = torch.device("cpu")
    assert resolve_device(given) is given


def test_a_model_loads_on_the_device_auto_names(tiny_model_dir):
    model, tokenizer = load_model(tiny_model_dir, "float32", "auto")
    assert next(model.parameters()).device.type == resolve_device("auto").type
    assert tokenizer.pad_token_id is not None
