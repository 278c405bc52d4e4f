# Path and key helpers. Keys come from pipeline.core.graph (tested without Snakemake): a stage's key
# digests its params, its code and its inputs' keys, so a changed setting reruns exactly the
# stages it affects, and a reverted one finds its old artifacts.
import json
import shlex
import sys
from pathlib import Path

REPO = str(Path(workflow.basedir).parent)
sys.path.insert(0, REPO)

from pipeline.core.config_check import check_config
from pipeline.core.errors import InputError
from pipeline.core.experiments import load_experiments
from pipeline.core.graph import ANALYSIS_NODES, Node, view_nodes
from pipeline.core.immutable import keep_published_outputs
from pipeline.core.stages import STAGES
from pipeline.core.view import refresh_view
from pipeline.data.latentqa_split import DataLeak, check_disjoint

check_config(
    config,
    Path(workflow.basedir) / "schemas" / "config.schema.yaml",
    workflow.configfiles or ["config/config.yaml"],
)


def _python():
    """The interpreter of every job, the one running Snakemake (the project's environment).

    Nothing then depends on PATH (`.venv/bin/snakemake` works without activating the venv). Under
    `--software-deployment-method conda` each job has its own environment, whose `python` is meant.
    """
    from snakemake.settings.types import DeploymentMethod

    if DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method:
        return "python"
    return shlex.quote(sys.executable)


PYTHON = _python()
# Snakemake deletes a job's outputs before running it; a published artifact (another run on the
# same store built it meanwhile) is kept and reused instead (pipeline/core/immutable.py).
keep_published_outputs()
STORE = config.get("store", "results/store")
LOGS = config.get("logs", "results/logs")


def _training_rows_not_evaluated(values, graph):
    """Why an experiment cannot run when its LatentQA training data holds evaluation rows."""
    if "data:latentqa" not in graph or "data:latentqa_eval" not in graph:
        return None
    sources = values["data"]
    try:
        check_disjoint(
            Path(REPO) / sources["latentqa"]["path"],
            Path(REPO) / sources["latentqa_eval"]["path"],
        )
    except DataLeak as exc:
        return str(exc)
    return None


# Every experiment's values (defaults merged in) and graph; one whose model or data is not on this
# machine, or whose training data holds evaluation rows, cannot run, and the others still can.
_LOADED = load_experiments(config, REPO, check=_training_rows_not_evaluated)
EXPERIMENTS, GRAPHS, GRAPH_ERRORS = _LOADED.values, _LOADED.graphs, _LOADED.errors


def _requested_experiments():
    """Experiments named by this run's targets (`results/<name>`), or the default ones."""
    targets = getattr(getattr(workflow, "dag_settings", None), "targets", None) or []
    if not targets:
        return set(config.get("default_experiments", []))
    parts = [Path(t).parts for t in targets]
    return {p[1] for p in parts if len(p) == 2 and p[0] == "results"}


# An experiment that cannot run (model or data missing, training rows from the evaluation
# split) stops a run that asks for it here, with its reason, before any job starts.
for _name in sorted(_requested_experiments() & set(GRAPH_ERRORS)):
    raise InputError(f"experiment {_name}: {GRAPH_ERRORS[_name]}")
NODES = {}
for _experiment, _graph in GRAPHS.items():
    for _node in _graph.values():
        NODES.setdefault((_node.stage, _node.key), (_experiment, _node))


def node_for(stage, wildcards):
    try:
        return NODES[(stage, wildcards.key)][1]
    except KeyError:
        raise ValueError(
            f"no experiment in the config has a {stage} artifact with key {wildcards.key}"
        ) from None


def stage_inputs(stage):
    """Input function: the artifact paths (or files) a stage reads, by input name."""

    def inputs(wildcards):
        node = node_for(stage, wildcards)
        return {
            name: (up.path(STORE) if isinstance(up, Node) else up)
            for name, up in node.inputs.items()
        }

    return inputs


def stage_params(stage):
    """Params function: the stage's full params as JSON."""

    def params(wildcards):
        return json.dumps(node_for(stage, wildcards).params, sort_keys=True)

    return params


def input_args(wildcards, input):
    return " ".join(
        f"--input {shlex.quote(f'{name}={path}')}" for name, path in input.items()
    )


def stage_resource(stage, name, default):
    """A resource of a stage from its experiment's `resources` section (not part of keys)."""

    def resource(wildcards):
        experiment = NODES[(stage, wildcards.key)][0]
        section = EXPERIMENTS[experiment].get("resources", {}).get(stage, {})
        return section.get(name, default)

    return resource


def stage_threads(stage):
    def threads(wildcards):
        value = stage_resource(stage, "threads", STAGES[stage].threads)(wildcards)
        return workflow.cores if value == "all" else int(value)

    return threads


def stage_output(stage):
    """The stage's artifact folder in the store, in `snakemake --report` where it shows files."""
    folder = directory(f"{STORE}/{stage}/{{key}}")
    patterns = STAGES[stage].report_patterns
    if not patterns:
        return folder
    return report(
        folder,
        patterns=list(patterns),
        caption=f"../report/{stage}.rst",
        category="Decoder",
    )


def stage_command(stage):
    """The stage's module run by its launcher: `python -m torch.distributed.run` (no `torchrun`
    needed on PATH) with one process per device, or one Python process."""
    spec = STAGES[stage]

    def command(wildcards):
        run = f"-m pipeline.{spec.module}"
        if spec.launcher == "torchrun":
            nproc = stage_resource(stage, "nproc", 1)(wildcards)
            run = (
                f"-m torch.distributed.run --standalone --nproc_per_node {nproc} {run}"
            )
        return f"{PYTHON} {run}"

    return command


def experiment_nodes(wildcards):
    if wildcards.experiment in GRAPH_ERRORS:
        raise ValueError(
            f"experiment {wildcards.experiment}: {GRAPH_ERRORS[wildcards.experiment]}"
        )
    return {
        name.replace(":", "_"): node.path(STORE)
        for name, node in view_nodes(GRAPHS[wildcards.experiment]).items()
    }


def view_args(wildcards, input):
    """The view's artifacts as --input arguments (every input but the store folder itself).

    The view rule also reads the store folder, which always exists and has no checksum, so a view
    dated to the epoch (out of date, pipeline.core.view) is rebuilt even when none of its
    new artifacts exists yet (an emptied store, or every key changed by a new model or an edited
    core module). A current view is dated now at parse, so the folder's date never reruns it.
    """
    return " ".join(
        f"--input {shlex.quote(f'{name}={path}')}"
        for name, path in input.items()
        if name != "store"
    )


def analysis_view_nodes(wildcards):
    """The analysis artifacts of an experiment (its own view, results/<experiment>_analysis)."""
    experiment_nodes(wildcards)  # an experiment whose graph failed names its error
    graph = GRAPHS[wildcards.experiment]
    if not all(name in graph for name in ANALYSIS_NODES):
        raise ValueError(
            f"experiment {wildcards.experiment} has no analysis: add `analysis: {{}}` to it"
        )
    return {name.replace(":", "_"): graph[name].path(STORE) for name in ANALYSIS_NODES}


def default_targets():
    return [f"results/{name}" for name in config.get("default_experiments", [])]


# A reverted setting finds its old artifacts: point each experiment's view at them now, so that
# no job is needed (the profile's mtime-only rerun trigger then sees the view as current). The
# store folder is an input of every view (view_args), so it exists from the start.
# The views this run asks for are recorded in the store with what they want (gc keeps it).
Path(STORE).mkdir(parents=True, exist_ok=True)
_RECORDED = _requested_experiments()
for _experiment, _graph in GRAPHS.items():
    refresh_view(
        f"results/{_experiment}",
        view_nodes(_graph),
        STORE,
        only_if_complete=True,
        record=_experiment in _RECORDED,
    )
    _analysis = {name: _graph[name] for name in ANALYSIS_NODES if name in _graph}
    if len(_analysis) == len(ANALYSIS_NODES):
        refresh_view(
            f"results/{_experiment}_analysis",
            _analysis,
            STORE,
            only_if_complete=True,
            record=f"{_experiment}_analysis" in _RECORDED,
        )


wildcard_constraints:
    key="[0-9a-f]{16}",
    experiment="|".join(EXPERIMENTS) or "(?!)",
