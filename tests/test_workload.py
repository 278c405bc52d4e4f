"""The benchmark's workload: template dialogs with the control masked from the read."""

from __future__ import annotations

from pipeline.bench import workload as benchmark_setup


def test_template_dialogs_mask_the_control(tokenizer):
    dialogs = benchmark_setup.template_dialogs("data/templates", 10, seed=1)
    assert len({d["id"] for d in dialogs}) == 10
    assert all(d["n_masked_turns"] == 1 and d["messages"][0]["role"] == "system" for d in dialogs)
    work = benchmark_setup.build_workload(tokenizer, dialogs, batch_size=4, seed=1)
    assert sorted(i for b in work.batches for i in b) == list(range(10))
    for dialog, read in zip(dialogs, work.reads, strict=True):
        text = tokenizer.decode([read.input_ids[p] for p in read.read_positions])
        assert dialog["messages"][1]["content"] in text
        assert dialog["messages"][0]["content"] not in text
