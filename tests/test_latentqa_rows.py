"""The LatentQA rows an evaluation scores: the eval split only, and none that training shares."""

from __future__ import annotations

import pytest
from test_evaluate import rows

from pipeline.data.schema import validate_records
from pipeline.evaluation.latentqa_rows import latentqa_eval_rows


def test_latentqa_eval_rows_shared_with_training_stop_the_run():
    data = validate_records(rows(), "dialogs")
    imported = [r for r in data if r["source"] == "latentqa-import"]
    assert latentqa_eval_rows(data, imported) == imported
    train_copy = {**imported[0], "source": "template", "split": "train", "label": "x"}
    with pytest.raises(SystemExit, match="its dialog also appears in the training data"):
        latentqa_eval_rows([*data, train_copy], imported)
    shared_pair = {**data[0], "qa": [imported[0]["qa"][1]]}
    with pytest.raises(SystemExit, match="the QA pair"):
        latentqa_eval_rows([*data, shared_pair], imported)
    only_train = [{**imported[0], "split": "train"}]
    assert latentqa_eval_rows(data, only_train) == []  # only the eval split is scored
