"""Checkpoints: exact round trips without pickle, atomic folders, pruning, RNG restore."""

from __future__ import annotations

import json
import random

import torch

from pipeline.training import checkpointing as ck
from pipeline.training import state_files


def optimizer_state() -> dict:
    params = [torch.nn.Parameter(torch.randn(3, 2)), torch.nn.Parameter(torch.randn(4))]
    opt = torch.optim.AdamW(params, lr=1e-2, betas=(0.8, 0.95))
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    return opt, params


def test_optimizer_state_round_trips_through_safetensors_and_json(tmp_path):
    opt, params = optimizer_state()
    state_files.save_state(tmp_path, "optimizer", opt.state_dict())
    loaded = state_files.load_state(tmp_path, "optimizer")
    assert loaded["param_groups"][0]["betas"] == (0.8, 0.95)
    assert set(loaded["state"]) == {0, 1}  # integer keys survive JSON
    fresh = torch.optim.AdamW([torch.nn.Parameter(p.detach().clone()) for p in params], lr=1e-2)
    fresh.load_state_dict(loaded)
    for key in (0, 1):
        for name, value in opt.state_dict()["state"][key].items():
            torch.testing.assert_close(fresh.state_dict()["state"][key][name], value)


def test_rng_state_restores_the_same_draws(tmp_path):
    random.seed(1)
    torch.manual_seed(1)
    state_files.save_state(tmp_path, "rng", ck.rng_state())
    expected = (random.random(), torch.rand(3))
    random.seed(99)
    torch.manual_seed(99)
    ck.set_rng_state(state_files.load_state(tmp_path, "rng"))
    got = (random.random(), torch.rand(3))
    assert got[0] == expected[0] and torch.equal(got[1], expected[1])


def test_only_complete_checkpoints_count_and_the_last_two_are_kept(tmp_path):
    for step in (2, 4, 6):
        tmp = ck.begin(tmp_path, step)
        (tmp / "x.txt").write_text(str(step))
        ck.commit(tmp_path, step, keep=2)
    assert [p.name for p in ck.complete_checkpoints(tmp_path)] == ["step-000004", "step-000006"]
    # A folder killed before its marker, and a temporary one, are ignored and cleaned.
    (tmp_path / "step-000008").mkdir()
    ck.begin(tmp_path, 10)
    assert ck.latest_checkpoint(tmp_path).name == "step-000006"
    assert json.loads((ck.latest_checkpoint(tmp_path) / ck.COMPLETE).read_text())["step"] == 6
    ck.clean_temporaries(tmp_path)
    assert not list(tmp_path.glob(".tmp-*"))


def test_unknown_types_are_refused(tmp_path):
    import pytest

    with pytest.raises(TypeError, match="cannot checkpoint"):
        state_files.save_state(tmp_path, "bad", {"x": object()})
