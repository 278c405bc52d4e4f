"""Scorers: normalised match, lexical and semantic similarity, the LLM judge, summaries."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from pipeline.evaluation import scoring
from pipeline.evaluation.scoring import (
    JudgeParams,
    LLMJudge,
    TokenF1Similarity,
    normalize,
    normalized_match,
    token_f1,
)
from pipeline.mechanism.similarity import MINILM_INSTALL, minilm_available


def test_normalize_strips_case_articles_punctuation_accents():
    assert normalize("A Retired Lighthouse-Keeper!") == "retired lighthouse keeper"
    assert normalize("The café, an idea.") == "cafe idea"


@pytest.mark.parametrize(
    "prediction",
    [
        "The assistant is a retired lighthouse keeper.",
        "retired lighthouse keeper",
        "I think: A RETIRED LIGHTHOUSE KEEPER, who lived on an island",
        "The persona is the retired lighthouse-keeper",
    ],
)
def test_normalized_match_positives(prediction):
    assert normalized_match(prediction, "A retired lighthouse keeper.")


@pytest.mark.parametrize(
    "prediction",
    [
        "A lighthouse keeper.",  # part of the key phrase is missing
        "A retired keeper of a lighthouse.",  # words out of order
        "A retired lighthouse keeperess",  # not the same word
        "",
    ],
)
def test_normalized_match_negatives(prediction):
    assert not normalized_match(prediction, "A retired lighthouse keeper.")


def test_normalized_match_is_word_based():
    assert normalized_match("The symbol is Mo.", "Mo")
    assert not normalized_match("The symbol is Mon.", "Mo")
    assert not normalized_match("anything", "The")  # a reference of articles only has no key


def test_token_f1():
    assert token_f1("a retired lighthouse keeper", "The retired lighthouse keeper.") == 1.0
    assert token_f1("pirate", "retired lighthouse keeper") == 0.0
    assert 0 < token_f1("old lighthouse keeper", "retired lighthouse keeper") < 1
    assert TokenF1Similarity().kind == "lexical"


def test_load_similarity_names_lexical_fallback(monkeypatch):
    monkeypatch.setattr(scoring, "minilm_available", lambda: False)
    sim = scoring.load_similarity("auto")
    assert (sim.name, sim.kind) == ("token_f1", "lexical")
    with pytest.raises(ValueError, match="similarity"):
        scoring.load_similarity("bogus")


@pytest.mark.skipif(
    not minilm_available(),
    reason=f"sentence-embedding model not installed ({MINILM_INSTALL})",
)
def test_minilm_similarity_orders_by_meaning():
    sim = scoring.load_similarity("minilm")
    assert sim.kind == "semantic"
    ref = "A retired lighthouse keeper."
    close, far, empty = sim.score(
        ["An old man who used to look after a lighthouse.", "The weather is sunny today.", ""],
        [ref, ref, ref],
    )
    # Paraphrase with almost no shared words scores above an unrelated sentence.
    assert close > far + 0.2
    assert token_f1("An old man who used to look after a lighthouse.", ref) < 0.4
    assert empty == 0.0


class _FakeChat(BaseHTTPRequestHandler):
    replies: list[str] = []
    seen: list[dict] = []

    def do_POST(self):  # noqa: N802 (http.server's naming)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append({"auth": self.headers.get("Authorization"), "body": body})
        reply = type(self).replies.pop(0)
        if reply == "500":
            self.send_response(500)
            self.end_headers()
            return
        payload = {
            "id": "x",
            "object": "chat.completion",
            "created": 0,
            "model": "m",
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": reply},
                }
            ],
        }
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_llm_judge_through_openai_client(monkeypatch):
    server = HTTPServer(("127.0.0.1", 0), _FakeChat)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        _FakeChat.replies = ["YES", "no.", "maybe", "500", "500", "500"]
        _FakeChat.seen = []
        monkeypatch.setenv("JUDGE_TEST_KEY", "sk-test-123")
        params = JudgeParams(
            enabled=True,
            model="judge-model",
            api_key_env="JUDGE_TEST_KEY",
            base_url=f"http://127.0.0.1:{server.server_port}/v1",
            timeout_s=5,
        )
        judge = LLMJudge(params)
        judge.client = judge.client.with_options(max_retries=0)
        scores = judge.score(["q"] * 4, ["Paris"] * 4, ["Paris", "Rome", "?", "x"])
        assert scores == [1.0, 0.0, None, None]
        assert judge.failures == 2
        assert _FakeChat.seen[0]["auth"] == "Bearer sk-test-123"
        assert _FakeChat.seen[0]["body"]["model"] == "judge-model"
        assert "Paris" in _FakeChat.seen[0]["body"]["messages"][0]["content"]
    finally:
        server.shutdown()


def test_llm_judge_needs_key_from_environment(monkeypatch):
    monkeypatch.delenv("NO_SUCH_JUDGE_KEY", raising=False)
    with pytest.raises(RuntimeError, match="NO_SUCH_JUDGE_KEY"):
        LLMJudge(JudgeParams(enabled=True, api_key_env="NO_SUCH_JUDGE_KEY"))


def _choice_item(i: int, reference: str, choices=("Yes.", "No.")):
    from pipeline.evaluation.items import Item

    return Item(
        f"i{i}", f"i{i}", ((("user", f"text {i}"),), 0), "True?", reference, choices=choices
    )


def test_debiased_scores_a_decoder_that_always_says_one_answer_at_chance():
    items = [_choice_item(i, "Yes." if i % 2 else "No.") for i in range(6)]
    rows = [{"margin": 3.0} for _ in items]  # always prefers "Yes." by the same amount
    assert scoring.debiased_scores(items, rows) == [0.5] * 6


def test_debiased_scores_credit_a_ranking_hidden_under_a_bias():
    items = [_choice_item(i, "Yes." if i % 2 else "No.") for i in range(6)]
    # Always prefers "Yes." (plain choice: 50%), but more so for the true statements.
    rows = [{"margin": 5.0 + (2.0 if i % 2 else 0.0) + 0.1 * i} for i in range(6)]
    assert scoring.debiased_scores(items, rows) == [1.0] * 6
    reversed_rows = [{"margin": 5.0 + (0.0 if i % 2 else 2.0) + 0.1 * i} for i in range(6)]
    assert scoring.debiased_scores(items, reversed_rows) == [0.0] * 6


def test_debiased_scores_orient_each_item_by_its_own_answer_order():
    # The same preference for "Positive." written with the choices in either order.
    items = [
        _choice_item(0, "Positive.", ("Positive.", "Negative.")),
        _choice_item(1, "Negative.", ("Negative.", "Positive.")),
        _choice_item(2, "Positive.", ("Negative.", "Positive.")),
        _choice_item(3, "Negative.", ("Positive.", "Negative.")),
    ]
    rows = [{"margin": 2.0}, {"margin": 1.0}, {"margin": -3.0}, {"margin": -1.0}]
    assert scoring.debiased_scores(items, rows) == [1.0, 1.0, 1.0, 1.0]


def test_debiased_scores_refuse_rows_without_a_two_answer_margin():
    items = [_choice_item(0, "A.", ("A.", "B.", "C.")), _choice_item(1, "A.", ("A.", "B.", "C."))]
    with pytest.raises(ValueError, match="item i0: the debiased scorer needs a two-answer choice"):
        scoring.debiased_scores(items, [{"prediction": "A."}, {"prediction": "B."}])


def _pairs(n_pairs: int):
    """Items of ``n_pairs`` contrast pairs, the true statement first in each."""
    items = []
    for p in range(n_pairs):
        for k, reference in enumerate(("Yes.", "No.")):
            item = _choice_item(2 * p + k, reference)
            item.meta["pair"] = f"pair{p}"
            items.append(item)
    return items


def test_pairwise_scores_each_pair_once_whatever_the_bias():
    items = _pairs(3)
    # Always prefers "Yes." (plain choice: 50%); more so for the true member in pairs 0 and 2.
    margins = [6.0, 5.0, 5.0, 5.0, 7.0, 2.0]
    rows = [{"margin": m} for m in margins]
    assert scoring.pairwise_scores(items, rows) == [1.0, None, 0.5, None, 1.0, None]
    # The same preferences with every pair's members swapped: wrong where they were right.
    swapped = [{"margin": m} for m in (5.0, 6.0, 5.0, 5.0, 2.0, 7.0)]
    assert scoring.pairwise_scores(items, swapped) == [0.0, None, 0.5, None, 0.0, None]


def test_pairwise_scores_orient_by_each_items_answer_order():
    items = _pairs(1)
    items[1].choices = ("No.", "Yes.")  # margins are for the first choice: "No." here
    assert scoring.pairwise_scores(items, [{"margin": 1.0}, {"margin": 2.0}]) == [1.0, None]
    assert scoring.pairwise_scores(items, [{"margin": 1.0}, {"margin": -2.0}]) == [0.0, None]


def test_pairwise_scores_leave_a_pair_cut_in_two_unscored():
    # The first three items of two pairs (a reading curve's first max_items): one pair scored.
    items = _pairs(2)[:3]
    rows = [{"margin": m} for m in (2.0, 1.0, 5.0)]
    assert scoring.pairwise_scores(items, rows) == [1.0, None, None]


def test_pairwise_scores_refuse_what_is_not_a_contrast_pair():
    items = _pairs(1)
    items[1].reference = "Yes."
    with pytest.raises(ValueError, match="pair pair0: the pairwise scorer needs two items"):
        scoring.pairwise_scores(items, [{"margin": 1.0}, {"margin": 2.0}])
    triple = _pairs(2)
    triple[2].meta["pair"] = "pair0"
    with pytest.raises(ValueError, match="pair pair0: the pairwise scorer needs two items"):
        scoring.pairwise_scores(triple, [{"margin": m} for m in (1.0, 2.0, 3.0, 4.0)])
    bare = [_choice_item(0, "Yes."), _choice_item(1, "No.")]
    with pytest.raises(ValueError, match="item i0: the pairwise scorer needs a two-answer choice"):
        scoring.pairwise_scores(bare, [{"margin": 1.0}, {"margin": 2.0}])
