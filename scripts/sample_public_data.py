"""Sample the public classification data of data/public/ from pinned source files.

Every source file is named in data/public/tasks.yaml by repository, commit, path and git blob id;
it is read from a git copy of that repository (a clone or a bare mirror that holds the blob) or
from a checked-out file, and refused unless its blob id matches. Sampling is seeded
(random.Random(seed) per task), so a second run writes byte-identical files.

    python scripts/sample_public_data.py --mirror DIR [--tasks data/public/tasks.yaml]

DIR holds one copy per repository, as DIR/<owner>+<name>/repo, DIR/<owner>+<name> or DIR/<name>;
`--repo owner/name=PATH` points at one elsewhere. Not part of the package: stdlib + pyyaml only.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import random
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import yaml

# Detokenising CoNLL-style tokens: no space before these, none after the openers.
NO_SPACE_BEFORE = set(". , ; : ! ? % ) ] } 's n't 're 've 'm 'll 'd".split())
NO_SPACE_AFTER = set("( [ { $".split())
MARKUP = re.compile(r"https?:|www\.|[<>@_|*#]|&\w+;")


def blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def git_bytes(repo: Path, *args: str) -> bytes | None:
    done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True)
    return done.stdout if done.returncode == 0 else None


class Sources:
    """Reads the pinned files of each source, checking every one against its blob id."""

    def __init__(self, spec: dict, mirror: Path | None, overrides: dict[str, Path]):
        self.spec, self.mirror, self.overrides = spec, mirror, overrides
        self.cache: dict[tuple[str, str], bytes] = {}

    def repo_dir(self, repository: str) -> Path:
        if repository in self.overrides:
            return self.overrides[repository]
        owner, name = repository.split("/")
        for cand in (f"{owner}+{name}/repo", f"{owner}+{name}", name):
            if self.mirror is not None and (self.mirror / cand).is_dir():
                return self.mirror / cand
        sys.exit(f"no copy of {repository} under {self.mirror} (give --repo {repository}=PATH)")

    def read(self, source: str, key: str) -> bytes:
        if (source, key) not in self.cache:
            self.cache[source, key] = self.fetch(source, key)
        return self.cache[source, key]

    def fetch(self, source: str, key: str) -> bytes:
        src = self.spec[source]
        entry = src["files"][key]
        repo = self.repo_dir(src["repository"])
        data = git_bytes(repo, "cat-file", "blob", entry["blob"])
        if data is None and (repo / entry["path"]).is_file():
            data = (repo / entry["path"]).read_bytes()
        if data is None and "rebuild_from" in entry:
            data = self.rebuild(repo, src["commit"], entry["rebuild_from"])
        if data is None or blob_id(data) != entry["blob"]:
            where = f"{src['repository']}@{src['commit']}:{entry['path']}"
            sys.exit(f"{where}: missing, or its blob id is not {entry['blob']}")
        return data

    @staticmethod
    def rebuild(repo: Path, commit: str, how: dict) -> bytes | None:
        listing = git_bytes(repo, "show", f"{commit}:{how['list']}")
        if listing is None:
            return None
        parts = [
            git_bytes(repo, "show", f"{commit}:{how['dir']}/{name}")
            for name in listing.decode().split()
        ]
        return None if any(p is None for p in parts) else b"".join(parts)

    def member(self, source: str, key: str, member: str) -> str:
        with zipfile.ZipFile(io.BytesIO(self.read(source, key))) as archive:
            return archive.read(member).decode("utf-8")


def detok(tokens: list[str]) -> str:
    """Join tokens as running text; straight double quotes alternate between opening and closing."""
    out, glue, quote_open = "", True, False
    for tok in tokens:
        if tok == '"':
            out += tok if (quote_open or glue) else " " + tok
            glue, quote_open = not quote_open, not quote_open
            continue
        out += tok if (glue or tok.lower() in NO_SPACE_BEFORE) else " " + tok
        glue = tok in NO_SPACE_AFTER
    return re.sub(r' "(?=[.,;:!?]|$)', '"', out)  # a lone quote closing a sentence


def conllu_sentences(text: str):
    """(text, tokens) per sentence; a token is a dict of the CoNLL-U columns, FEATS parsed."""
    sent_text, tokens = None, []
    for line in text.splitlines() + [""]:
        if line.startswith("# text = "):
            sent_text = line[len("# text = ") :]
        elif line and not line.startswith("#"):
            cols = line.split("\t")
            if cols[0].isdigit():
                feats = dict(f.split("=", 1) for f in cols[5].split("|") if "=" in f)
                tok = {"id": int(cols[0]), "upos": cols[3], "feats": feats}
                tokens.append(tok | {"head": int(cols[6]), "deprel": cols[7]})
        elif not line and tokens:
            yield sent_text, tokens
            sent_text, tokens = None, []


def clause(tokens: list[dict]) -> tuple[dict, list[dict]] | None:
    """The root and its children, when the root heads a clause with a subject."""
    root = next(t for t in tokens if t["head"] == 0)
    kids = [t for t in tokens if t["head"] == root["id"]]
    if not any(k["deprel"] in ("nsubj", "nsubj:pass", "expl", "csubj") for k in kids):
        return None
    return root, kids


def well_formed(text: str) -> bool:
    return (
        bool(re.match(r"^[\"'(]?[A-Z]", text)) and text[-1] in ".!?\"'" and not MARKUP.search(text)
    )


def ewt_candidates(src: Sources, rule):
    for text, tokens in conllu_sentences(src.read("ud_english_ewt", "train").decode("utf-8")):
        found = clause(tokens) if text and well_formed(text) else None
        label = rule(tokens, *found) if found else None
        if label:
            yield label, text, None


def tense_rule(tokens, root, kids):
    finite = [
        t
        for t in [root] + kids
        if (t is root or t["deprel"] in ("aux", "aux:pass", "cop"))
        and t["feats"].get("VerbForm") == "Fin"
    ]
    tenses = {t["feats"].get("Tense") for t in finite}
    if (
        not finite
        or None in tenses
        or len(tenses) != 1
        or any(t["feats"].get("Mood") == "Imp" for t in finite)
    ):
        return None
    return {"Past": "past", "Pres": "present"}.get(tenses.pop())


def number_rule(tokens, root, kids):
    subjects = [k for k in kids if k["deprel"] in ("nsubj", "nsubj:pass")]
    if len(subjects) != 1 or subjects[0]["upos"] not in ("NOUN", "PROPN"):
        return None
    subj = subjects[0]
    if any(t["head"] == subj["id"] and t["deprel"] == "conj" for t in tokens):
        return None  # "John and Mary": the head noun's Number is not the subject's
    return {"Sing": "singular", "Plur": "plural"}.get(subj["feats"].get("Number"))


def negation_rule(tokens, root, kids):
    negs = [t for t in tokens if "Neg" in (t["feats"].get("Polarity"), t["feats"].get("PronType"))]
    if not negs:
        return "affirmative"
    if len(negs) == 1 and negs[0]["head"] == root["id"] and negs[0]["deprel"] == "advmod":
        return "negated"
    return None  # negation elsewhere than on the main clause: ambiguous for the question


def rt_polarity(src: Sources):
    spec = src.spec["rt_polarity"]
    for label, member in spec["files"]["archive"]["members"].items():
        lines = src.member("rt_polarity", "archive", member).splitlines()
        for line in lines[: spec["train_lines"]]:
            yield label, detok(line.split()), None


def creak(src: Sources):
    for line in src.read("creak", "train").decode("utf-8").splitlines():
        row = json.loads(line)
        yield row["label"], " ".join(row["sentence"].split()), None


def wikigold(src: Sources):
    types = {"PER": "person", "LOC": "location", "ORG": "organization"}
    for block in src.read("wikigold", "all").decode("utf-8").split("\n\n"):
        pairs = [ln.rsplit(" ", 1) for ln in block.strip().splitlines()]
        if not pairs or pairs[0][0] == "-DOCSTART-":
            continue
        text = detok([tok for tok, _ in pairs])
        spans, prev = [], "O"
        for tok, tag in pairs:
            if tag != "O" and (tag.startswith("B-") or tag[2:] != prev[2:]):
                spans.append((tag[2:], [tok]))
            elif tag != "O":
                spans[-1][1].append(tok)
            prev = tag
        names = [(kind, detok(toks)) for kind, toks in spans]
        for kind, name in names:
            clash = sum(n == name for _, n in names) > 1 or text.count(name) != 1
            if kind in types and not clash and well_formed(text):
                yield types[kind], text, {"entity": name}


def udhr(src: Sources):
    for label, member in src.spec["udhr"]["files"]["archive"]["members"].items():
        for para in src.member("udhr", "archive", member).splitlines():
            for sent in re.split(r"(?<=\.)\s+(?=[A-ZÀ-ÖØ-Þ])", " ".join(para.split())):
                if sent and sent[-1] in ".,;:":  # headings ("Article 3") carry no punctuation
                    yield label, sent, None


def clinc_domain(src: Sources, task: dict):
    domains = json.loads(src.read("clinc150", "domains"))
    domain_of = {intent: domain for domain, intents in domains.items() for intent in intents}
    for text, intent in json.loads(src.read("clinc150", "data"))["train"]:
        if intent not in task.get("exclude_intents", []):
            yield domain_of.get(intent), " ".join(text.split()), None


READERS = {
    "rt_polarity": lambda s, t: rt_polarity(s),
    "creak": lambda s, t: creak(s),
    "wikigold": lambda s, t: wikigold(s),
    "udhr": lambda s, t: udhr(s),
    "clinc_domain": clinc_domain,
    "ewt_tense": lambda s, t: ewt_candidates(s, tense_rule),
    "ewt_number": lambda s, t: ewt_candidates(s, number_rule),
    "ewt_negation": lambda s, t: ewt_candidates(s, negation_rule),
}


def sample_task(name: str, task: dict, cfg: dict, src: Sources, used: set[str]) -> list[dict]:
    """Balanced, seeded sample, skipping texts seen under two labels, too long, or used before."""
    pools: dict[str, dict[str, dict | None]] = {label: {} for label in task["labels"]}
    seen: dict[str, set[str]] = {}  # labels per item; an item is a text, or a text and its fields
    key = lambda text, fields: text + "\0" + json.dumps(fields, sort_keys=True)  # noqa: E731
    for label, text, fields in READERS[task["reader"]](src, task):
        if label in pools and cfg["min_words"] <= len(text.split()) <= cfg["max_words"]:
            seen.setdefault(key(text, fields), set()).add(label)
            pools[label].setdefault(text, fields)  # one item per text and label: no repeated text
    rng = random.Random(cfg["seed"])
    rows = []
    for label in task["labels"]:
        pool = [
            (t, f) for t, f in pools[label].items() if len(seen[key(t, f)]) == 1 and t not in used
        ]
        if len(pool) < task["per_label"]:
            want = task["per_label"]
            sys.exit(f"task {name}: only {len(pool)} candidates for label {label}, {want} wanted")
        for text, fields in rng.sample(pool, task["per_label"]):
            used.add(text)
            rows.append({"text": text, "label": label} | ({"fields": fields} if fields else {}))
    rng.shuffle(rows)
    return [{"id": f"{name}-{i}"} | row for i, row in enumerate(rows)]


def check(name: str, task: dict, rows: list[dict], cfg: dict) -> None:
    """Refuse a sample that breaks the data's promises, naming the task and row."""
    counts = {label: sum(r["label"] == label for r in rows) for label in task["labels"]}
    problems = [] if set(counts.values()) == {task["per_label"]} else [f"unbalanced {counts}"]
    if not len({r["id"] for r in rows}) == len({r["text"] for r in rows}) == len(rows):
        problems.append("repeated id or text")
    for r in rows:
        if not cfg["min_words"] <= len(r["text"].split()) <= cfg["max_words"]:
            problems.append(f"{r['id']}: length out of bounds")
        if "fields" in r and r["text"].count(r["fields"]["entity"]) != 1:
            problems.append(f"{r['id']}: entity not once in the text")
    if problems:
        sys.exit(f"task {name}: " + "; ".join(problems))
    print(f"{name:12s} {len(rows):4d} rows  " + "  ".join(f"{k}={v}" for k, v in counts.items()))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mirror", type=Path, help="folder with a git copy of each source repo")
    parser.add_argument("--repo", action="append", default=[], metavar="OWNER/NAME=PATH")
    parser.add_argument("--tasks", type=Path, default=Path("data/public/tasks.yaml"))
    args = parser.parse_args()
    cfg = yaml.safe_load(args.tasks.read_text(encoding="utf-8"))
    overrides = {k: Path(v) for k, v in (r.split("=", 1) for r in args.repo)}
    src = Sources(cfg["sources"], args.mirror, overrides)
    used: set[str] = set()
    samples = {name: sample_task(name, task, cfg, src, used) for name, task in cfg["tasks"].items()}
    for name, rows in samples.items():
        check(name, cfg["tasks"][name], rows, cfg)
    for name, rows in samples.items():  # written only once every task has passed its check
        out = args.tasks.parent / cfg["tasks"][name]["file"]
        tmp = out.with_suffix(".tmp")
        lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        tmp.write_text(lines, encoding="utf-8")
        tmp.replace(out)


if __name__ == "__main__":
    main()
