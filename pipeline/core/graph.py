"""From an experiment's config to its stage graph: each node with its params, inputs and key.

The workflow (workflow/rules/common.smk) calls :func:`experiment_graph` at parse time, so that
every artifact path ``results/store/<stage>/<key>`` is known before any job runs.
"""

from __future__ import annotations

import copy
import dataclasses
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.core import stage as stage_cli
from pipeline.core import stages, store
from pipeline.core.cross_checks import check_mix, check_relations
from pipeline.core.errors import InputError

DATA_SOURCES = {
    "templates": "templates",
    "latentqa": "import_latentqa",
    "latentqa_eval": "import_latentqa",
    "curated": "curate",
    "context": "context",
    "classification": "classification",
    "relation_qa": "relation_qa",
    "statements": "statements",
    "public": "public_tasks",
}
"""Config keys under ``data`` and the stage each one runs. ``latentqa_eval`` is evaluation only:
it feeds the evaluate stage, never the filter or training."""
RELATION_SOURCES = ("relation_qa", "statements")
"""Data sources made from relation facts: none may name a relation evaluated on."""
OPTIONAL = "optional"
"""A LatentQA source's setting: when its folder is absent, the source is left out (with a note)
instead of stopping the experiment."""
EVAL_ONLY = "latentqa_eval"
LATENTQA_FILES = ("qa.json",)
"""Files every LatentQA folder needs besides one ``<kind>.json`` per imported kind."""
FROM_TEXTS = ("context", "classification")
"""Data stages that read the model's own texts (the ``texts`` stage, configured under ``texts``)."""


@dataclass
class Node:
    """One artifact of the graph."""

    stage: str
    """The stage that builds it."""
    params: dict[str, Any]
    """Its full params, defaults filled in."""
    inputs: dict[str, Node | str] = field(default_factory=dict)
    """Upstream nodes, or external paths (digested into the key)."""
    external: dict[str, str] = field(default_factory=dict)
    """Identities of external inputs (file digests, model fingerprints)."""
    key: str = ""
    """The content key, set by :func:`experiment_graph`."""

    def path(self, store_dir: str | Path) -> str:
        return f"{store_dir}/{self.stage}/{self.key}"


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(dict(base))
    for name, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(name), Mapping):
            merged[name] = deep_merge(merged[name], value)
        else:
            merged[name] = copy.deepcopy(value)
    return merged


def full_params(stage_name: str, values: Mapping[str, Any] | None, where: str) -> dict[str, Any]:
    """Validate against the stage's dataclass and fill in its defaults."""
    params = stage_cli.build_params(stages.params_class(stage_name), values or {}, where)
    return dataclasses.asdict(params)


def _dir_digest(path: Path, pattern: str = "*") -> str:
    files = sorted(p for p in path.glob(pattern) if p.is_file())
    if not files:
        raise FileNotFoundError(f"no files matching {pattern} in {path}")
    return store.source_digest([p.resolve() for p in files], root="/")


def build_order(experiments: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Experiment names, each after those its ``report.compare_with`` names (which it reads)."""
    order: list[str] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in order or name not in experiments:
            return  # an unknown name is reported by experiment_graph, with its field
        if name in path:
            raise ValueError(f"experiments {' -> '.join((*path, name))}: compare_with circle")
        for peer in (experiments[name].get("report") or {}).get("compare_with", []):
            visit(peer, (*path, name))
        order.append(name)

    for name in experiments:
        visit(name, ())
    return order


def experiment_graph(
    name: str,
    config: Mapping[str, Any],
    root: str | Path = ".",
    peers: Mapping[str, dict[str, Node]] | None = None,
) -> dict[str, Node]:
    """The nodes of one experiment, keyed by stage name (data sources as ``data:<source>``).

    ``peers``: the graphs of experiments built before, which ``report.compare_with`` may name.
    """
    from pipeline.core.model_source import fingerprint, model_depth

    root = Path(root)
    where = f"experiments.{name}"
    nodes: dict[str, Node] = {}
    model = Node("prepare_model", full_params("prepare_model", config["model"], f"{where}.model"))
    model.external["model"] = fingerprint(model.params)
    nodes["prepare_model"] = model
    depth = model_depth(model.params)

    sources = config.get("data") or {}
    if not sources:
        raise ValueError(f"{where}.data names no data source (one of {sorted(DATA_SOURCES)})")
    if any(source in FROM_TEXTS for source in sources):
        texts = Node(
            "texts",
            full_params("texts", config.get("texts"), f"{where}.texts"),
            {"model": model, "prompts": str(root / "data" / "curriculum" / "texts.yaml")},
        )
        nodes["texts"] = texts
    data_nodes = {}
    for source, values in sources.items():
        values = dict(values or {})
        stage_name = DATA_SOURCES[source]
        node = Node(stage_name, {})
        if stage_name == "templates":
            node.inputs["model"] = model
        elif stage_name in FROM_TEXTS:
            node.inputs["texts"] = nodes["texts"]
        elif stage_name in RELATION_SOURCES:
            node.inputs["relations"] = str(root / "data" / "relations.yaml")
        elif stage_name == "public_tasks":
            node.inputs["tasks"] = str(root / "data" / "public" / "tasks.yaml")
        elif stage_name == "import_latentqa":
            src = root / values.pop("path")
            # The repository ships the folder with its README and checksums only: no data in
            # it counts as absent; some of the files but not all is refused below.
            if values.pop(OPTIONAL, False) and not any(src.glob("*.json")):
                print(
                    f"{where}.data.{source}: {src} holds no LatentQA files, so it is left out "
                    "(README: where to get the LatentQA data)",
                    file=sys.stderr,
                )
                continue
            # Imported training data is split by label in the filter; the evaluation split stays.
            values.setdefault("split", "eval" if source == EVAL_ONLY else "train")
            node.inputs["source"] = str(src)
        node.params = full_params(stage_name, values, f"{where}.data.{source}")
        if stage_name == "import_latentqa":
            _check_latentqa_folder(f"{where}.data.{source}", src, node.params)
            node.external["source"] = _dir_digest(src, "*.json")
        nodes[f"data:{source}"] = node
        if source != EVAL_ONLY:
            data_nodes[f"data_{source}"] = node
    if not data_nodes:
        raise ValueError(f"{where}.data has no training source, only {EVAL_ONLY}")

    filtered = Node(
        "filter",
        full_params("filter", config.get("filter"), f"{where}.filter"),
        {**data_nodes, "model": model},
    )
    nodes["filter"] = filtered

    train_params = full_params("train", config.get("train"), f"{where}.train")
    check_mix(where, train_params["mix"], [(n.stage, n.params) for n in data_nodes.values()])
    train = Node("train", train_params, {"model": model, "data": filtered})
    if train_params["mode"] == "cached":
        cache_values = dict(config.get("cache") or {})
        cache_values.setdefault("layers", list(train_params["read_layers"]))
        cache_values["positions"] = train_params["positions"]
        cache = Node(
            "activation_cache",
            full_params("activation_cache", cache_values, f"{where}.cache"),
            {"model": model, "data": filtered},
        )
        nodes["activation_cache"] = cache
        train.inputs["cache"] = cache
        _check_layers(f"{where}.cache.layers", cache.params["layers"], depth, model.params)
    _check_layers(f"{where}.train.read_layers", train_params["read_layers"], depth, model.params)
    if train_params["write_layer"] is not None:
        _check_layers(
            f"{where}.train.write_layer", [train_params["write_layer"]], depth, model.params
        )
    nodes["train"] = train

    evaluate = Node(
        "evaluate",
        full_params("evaluate", config.get("evaluate"), f"{where}.evaluate"),
        {"model": model, "train": train, "data": filtered},
    )
    relations_file = root / "data" / "relations.yaml"
    evaluate.inputs["relations"] = str(relations_file)
    check_relations(
        f"{where}.evaluate.eval_relations", evaluate.params["eval_relations"], relations_file
    )
    evaluate.inputs["synonyms"] = str(root / "data" / "synonyms.yaml")
    for source in RELATION_SOURCES:
        if f"data_{source}" not in data_nodes:
            continue
        trained = data_nodes[f"data_{source}"].params["relations"]
        check_relations(f"{where}.data.{source}.relations", trained, relations_file)
        shared = sorted(
            set(evaluate.params["eval_relations"])
            if trained is None
            else set(trained) & set(evaluate.params["eval_relations"])
        )
        if shared:
            raise ValueError(
                f"{where}: relations {shared} are both trained on (data.{source}.relations"
                f"{', null: all' if trained is None else ''}) and evaluated on "
                "(evaluate.eval_relations)"
            )
    if f"data:{EVAL_ONLY}" in nodes:
        evaluate.inputs["latentqa"] = nodes[f"data:{EVAL_ONLY}"]
    if "data:public" in nodes:
        evaluate.inputs["public"] = nodes["data:public"]
    nodes["evaluate"] = evaluate

    report_inputs: dict[str, Node | str] = {"train": train, "evaluate": evaluate, "data": filtered}
    curve = reading_curve_node(config, where, train, evaluate)
    if curve is not None:
        nodes["reading_curve"] = curve
        report_inputs["curve"] = curve
    if config.get("control") is not None:
        control = Node(
            "control",
            full_params("control", config["control"], f"{where}.control"),
            {
                "model": model,
                "train": train,
                "prompts": str(root / "data" / "steering" / "prompts.yaml"),
                "qa": str(root / "data" / "steering" / "qa.yaml"),
            },
        )
        nodes["control"] = control
        report_inputs["control"] = control
    report_params = full_params("report", config.get("report"), f"{where}.report")
    for peer in report_params["compare_with"]:
        if peer == name or peer not in (peers or {}):
            raise ValueError(
                f"{where}.report.compare_with: {peer!r} is not another experiment of the config"
            )
        report_inputs[f"peer_{peer}_train"] = peers[peer]["train"]
        report_inputs[f"peer_{peer}_evaluate"] = peers[peer]["evaluate"]
    if config.get("analysis") is not None:
        analysis = analysis_nodes(config["analysis"], where, root, model, filtered, train)
        nodes.update(analysis)
        if report_params["readers"]:
            report_inputs.update({name: analysis[name] for name in ("probes", "lens", "explain")})
    elif report_params["readers"]:
        raise ValueError(f"{where}.report.readers needs an analysis section (`analysis: {{}}`)")
    nodes.update(declared_nodes(config, where, nodes))
    nodes["report"] = Node("report", report_params, report_inputs)
    for node in nodes.values():
        _assign_key(node)
    return nodes


def declared_nodes(
    config: Mapping[str, Any], where: str, nodes: Mapping[str, Node]
) -> dict[str, Node]:
    """The stages wired by their declaration alone (``StageSpec.reads``) that the experiment has
    a section for, each reading the nodes its declaration names."""
    out = {}
    for stage_name, spec in stages.STAGES.items():
        if not spec.reads or stage_name not in config:
            continue
        missing = sorted(up for up in spec.reads.values() if up not in nodes)
        if missing:
            raise ValueError(
                f"{where}.{stage_name}: the stage reads {missing}, which this experiment does "
                "not build"
            )
        out[stage_name] = Node(
            stage_name,
            full_params(stage_name, config[stage_name], f"{where}.{stage_name}"),
            {name: nodes[up] for name, up in spec.reads.items()},
        )
    return out


def reading_curve_node(
    config: Mapping[str, Any], where: str, train: Node, evaluate: Node
) -> Node | None:
    """The reading curve over the adapters training publishes (``train.adapter_every``), if any."""
    if not train.params["adapter_every"]:
        if config.get("reading_curve") is not None:
            raise ValueError(
                f"{where}.reading_curve needs adapters to read: set train.adapter_every"
            )
        return None
    return Node(
        "reading_curve",
        full_params("reading_curve", config.get("reading_curve"), f"{where}.reading_curve"),
        {"evaluate": evaluate, **evaluate.inputs},
    )


def _check_latentqa_folder(where: str, folder: Path, params: dict[str, Any]) -> None:
    """A missing folder or file fails here, at parse, not after model preparation."""
    if where.endswith(EVAL_ONLY) and params["split"] != "eval":
        raise InputError(
            f"{where}.split: the evaluation split stays 'eval', not {params['split']!r}"
        )
    needed = [*LATENTQA_FILES, *(f"{kind}.json" for kind in params["kinds"])]
    missing = [name for name in needed if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{where}.path: {folder} lacks {', '.join(missing)} (LatentQA files; "
            "data/latentqa/README.md says where to get the training data)"
        )
    _check_sums(where, folder)


SUMS = "SHA256SUMS"
"""A ``sha256sum`` listing the user keeps beside downloaded data; checked at parse when present."""


def _check_sums(where: str, folder: Path) -> None:
    """Refuse data whose files differ from the checksums recorded when they were fetched."""
    listing = folder / SUMS
    if not listing.is_file():
        return
    for number, line in enumerate(listing.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        digest, _, name = line.strip().partition(" ")
        name = name.strip().lstrip("*")
        if len(digest) != 64 or not name:
            raise InputError(f"{listing}, line {number}: not '<sha256>  <file>': {line!r}")
        path = folder / name
        if not path.is_file():
            raise InputError(f"{where}.path: {listing}, line {number}: {name} is missing")
        if store.file_sha256(path) != digest.lower():
            raise InputError(
                f"{where}.path: {path} does not match its checksum in {listing} (line {number}); "
                "the data changed since it was recorded"
            )


def _check_layers(where: str, layers: list[int], depth: int | None, model: dict) -> None:
    """Refuse blocks the model does not have now, not after preparing it and making the data."""
    for layer in layers:
        if depth is not None and not 0 <= layer < depth:
            raise InputError(
                f"{where} = {layer}, but the model {model['name']} has {depth} blocks "
                f"(0..{depth - 1})"
            )


ANALYSIS_STAGES = ("statements", "layer_cache", "probes", "lens", "explain")
"""The sections of an experiment's ``analysis`` config, one per stage."""


def analysis_nodes(
    values: Mapping[str, Any], where: str, root: Path, model: Node, data: Node, train: Node
) -> dict[str, Node]:
    """The readers beside the decoder: layer caches, probes, the logit lens, explanations.

    Both layer caches read the positions the decoder reads (``train.positions``), one the
    filter's dialogs under a control, one the statements. Every node but ``probes`` and
    ``explain`` is independent of the decoder, so they can be built before training.
    """
    values = dict(values or {})
    unknown = sorted(set(values) - set(ANALYSIS_STAGES))
    if unknown:
        raise ValueError(
            f"{where}.analysis: unknown section(s) {unknown}; known: {ANALYSIS_STAGES}"
        )
    where = f"{where}.analysis"

    def params(stage_name: str, **fixed: Any) -> dict[str, Any]:
        section = {**dict(values.get(stage_name) or {}), **fixed}
        return full_params(stage_name, section, f"{where}.{stage_name}")

    relations = str(root / "data" / "relations.yaml")
    statements = Node("statements", params("statements"), {"relations": relations})
    cache = dict(values.get("layer_cache") or {})
    positions = cache.get("positions", train.params["positions"])
    dialogs_cache = Node(
        "layer_cache",
        params("layer_cache", positions=positions, items="controlled"),
        {"model": model, "data": data},
    )
    statements_cache = Node(
        "layer_cache",
        params("layer_cache", positions=positions, items="all"),
        {"model": model, "data": statements},
    )
    lens = Node(
        "lens",
        params("lens"),
        {
            "model": model,
            "relations": relations,
            "translation": str(root / "data" / "lens" / "translation.yaml"),
        },
    )
    probes = Node(
        "probes",
        params("probes"),
        {
            "model": model,
            "statements": statements,
            "statements_cache": statements_cache,
            "data": data,
            "dialogs_cache": dialogs_cache,
            "train": train,
        },
    )
    explain = Node("explain", params("explain"), {"model": model, "train": train, "data": data})
    return {
        "statements": statements,
        "layer_cache:dialogs": dialogs_cache,
        "layer_cache:statements": statements_cache,
        "lens": lens,
        "probes": probes,
        "explain": explain,
    }


def view_nodes(graph: Mapping[str, Node]) -> dict[str, Node]:
    """The nodes ``results/<experiment>`` links: all but analysis nodes the report does not read
    (those have their own view, ``results/<experiment>_analysis``, and are built on demand)."""
    shown = {name for name, up in graph["report"].inputs.items() if isinstance(up, Node)}
    if shown & set(ANALYSIS_NODES):
        return dict(graph)
    return {name: node for name, node in graph.items() if name not in ANALYSIS_NODES}


BEFORE_TRAINING = ("statements", "layer_cache:dialogs", "layer_cache:statements", "lens")
"""Analysis nodes that need no decoder (the layer choice reads them before training)."""
ANALYSIS_NODES = (*BEFORE_TRAINING, "probes", "explain")
"""Every analysis node (the view ``results/<experiment>_analysis``)."""


def _assign_key(node: Node) -> str:
    if node.key:
        return node.key
    keys = {}
    for input_name, upstream in node.inputs.items():
        if isinstance(upstream, Node):
            keys[input_name] = _assign_key(upstream)
        elif input_name in node.external:
            keys[input_name] = node.external[input_name]
        else:
            keys[input_name] = "sha256:" + store.file_sha256(upstream)
    for input_name, identity in node.external.items():
        keys.setdefault(input_name, identity)
    node.key = store.compute_key(node.stage, node.params, stages.code_digest(node.stage), keys)
    return node.key
