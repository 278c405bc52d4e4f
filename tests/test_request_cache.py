"""The persistent request cache: keys, atomic one-file-per-call entries, damaged entries."""

from __future__ import annotations

import json

import pytest

from pipeline.curation.request_cache import RequestCache, request_key

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
SAMPLING = {"temperature": 1.0, "max_tokens": 100, "seed": 3}


def key(**changes) -> str:
    args = dict(
        model="m",
        messages=MESSAGES,
        sampling=SAMPLING,
        template_version="persona:1",
        sample_index=3,
    )
    args.update(changes)
    return request_key(**args)


def test_key_depends_on_exactly_the_call():
    base = key()
    assert base == key(sampling=dict(reversed(list(SAMPLING.items()))))  # order-free
    assert len(base) == 64
    variants = [
        key(model="m2"),
        key(messages=MESSAGES[:1]),
        key(messages=[MESSAGES[0], {"role": "user", "content": "Hi!"}]),
        key(sampling=dict(SAMPLING, temperature=0.7)),
        key(sampling=dict(SAMPLING, seed=4)),
        key(template_version="persona:2"),
        key(sample_index=4),
    ]
    assert len({base, *variants}) == len(variants) + 1


def test_put_get_roundtrip_is_one_file_per_call(tmp_path):
    cache = RequestCache(tmp_path / "cache")
    k = key()
    assert cache.get(k) is None
    path = cache.put(k, {"model": "m", "messages": MESSAGES}, {"content": "{}", "prompt_tokens": 3})
    assert path == tmp_path / "cache" / k[:2] / f"{k}.json"
    assert cache.get(k)["response"] == {"content": "{}", "prompt_tokens": 3}
    assert len(cache) == 1 and cache.writes == 1 and cache.hits == 1
    # Nothing temporary is left behind, and a second cache object sees the entry (persistence).
    assert [p.name for p in path.parent.iterdir()] == [path.name]
    assert RequestCache(tmp_path / "cache").get(k) is not None


def test_damaged_or_foreign_entries_count_as_missing(tmp_path):
    cache = RequestCache(tmp_path)
    k = key()
    cache.path(k).parent.mkdir(parents=True)
    cache.path(k).write_text('{"key": "')  # torn write from some other tool
    assert cache.get(k) is None
    cache.path(k).write_text(json.dumps({"key": key(sample_index=9), "response": {}}))
    assert cache.get(k) is None
    cache.put(k, {}, {"content": "x"})
    assert cache.get(k)["response"]["content"] == "x"


def test_failed_write_leaves_no_entry(tmp_path, monkeypatch):
    cache = RequestCache(tmp_path)
    k = key()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("pipeline.curation.request_cache.os.replace", broken)
    with pytest.raises(OSError, match="disk full"):
        cache.put(k, {}, {"content": "x"})
    assert cache.get(k) is None
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_rejects_keys_that_are_not_digests(tmp_path):
    with pytest.raises(ValueError, match="sha256"):
        RequestCache(tmp_path).path("../../etc/passwd")
