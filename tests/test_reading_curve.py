"""The report's reading-versus-minutes view: one point per decoder from its own artifacts."""

from __future__ import annotations

import json

from pipeline.report import reading_curve


def artifact(root, name, minutes, steps, true, shuffled):
    train, evaluate = root / f"{name}_train", root / f"{name}_evaluate"
    train.mkdir()
    evaluate.mkdir()
    info = {"steps": steps, "train_seconds": minutes * 60}
    (train / "_manifest.json").write_text(json.dumps({"info": info}))
    metrics = {
        m: {"conditions": {"true": {"mean": true}, "shuffled": {"mean": shuffled}}}
        for m in reading_curve.METRICS
    }
    (evaluate / "eval.json").write_text(json.dumps({"metrics": metrics}))
    return train, evaluate


def test_points_table_and_plot(tmp_path):
    own = artifact(tmp_path, "own", minutes=30.0, steps=600, true=0.8, shuffled=0.1)
    peer = artifact(tmp_path, "short", minutes=10.0, steps=200, true=0.5, shuffled=0.05)
    inputs = {
        "train": own[0],
        "evaluate": own[1],
        "peer_decoder_smollm2_train": peer[0],
        "peer_decoder_smollm2_evaluate": peer[1],
    }
    found = reading_curve.points(inputs, own="decoder_smollm2_long")
    assert [p["experiment"] for p in found] == ["decoder_smollm2", "decoder_smollm2_long"]
    assert [p["minutes"] for p in found] == [10.0, 30.0]
    assert found[1]["metrics"]["subject_identification"] == {"true": 0.8, "shuffled": 0.1}
    table = reading_curve.table(found)
    assert table[2].startswith("| decoder_smollm2 | 200 | 10.0 | 0.500 / 0.050")
    reading_curve.plot(found, tmp_path / "curve.png")
    assert (tmp_path / "curve.png").stat().st_size > 1000
