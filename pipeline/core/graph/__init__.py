"""From an experiment's config to its stage graph: each node with its params, inputs and key.

The workflow (workflow/rules/common.smk, through ``experiments.load_experiments``) builds every
experiment's graph at parse time, so that every artifact path ``results/store/<stage>/<key>`` is
known before any job runs. One module per family of nodes: ``data`` (texts, data sources,
filter), ``train`` (activation cache, training), ``evaluate`` (evaluation, reading curve,
control), ``analysis`` (readers beside the decoder), ``report`` (report, compared experiments,
views); ``experiment`` assembles them and ``nodes`` holds the node and its key.
"""

from pipeline.core.graph.analysis import (
    ANALYSIS_NODES,
    ANALYSIS_STAGES,
    BEFORE_TRAINING,
    analysis_nodes,
)
from pipeline.core.graph.data import DATA_SOURCES, EVAL_ONLY, OPTIONAL, RELATION_SOURCES
from pipeline.core.graph.evaluate import reading_curve_node
from pipeline.core.graph.experiment import declared_nodes, experiment_graph
from pipeline.core.graph.nodes import Node, deep_merge, full_params
from pipeline.core.graph.report import build_order, view_nodes

__all__ = [
    "ANALYSIS_NODES",
    "ANALYSIS_STAGES",
    "BEFORE_TRAINING",
    "DATA_SOURCES",
    "EVAL_ONLY",
    "OPTIONAL",
    "RELATION_SOURCES",
    "Node",
    "analysis_nodes",
    "build_order",
    "declared_nodes",
    "deep_merge",
    "experiment_graph",
    "full_params",
    "reading_curve_node",
    "view_nodes",
]
