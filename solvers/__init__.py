"""Offline solvers: concept vectors and their quality from cached activations, without the model.

Pure maths over pooled vectors and token matrices; reading the cache and scheduling passes is the job
layer's business: `solve_cache` (solvers/job.py) and `sweep_cache` (solvers/sweep.py).
"""

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the exports; at run time each is imported on first use (actcache/_lazy.py)
    from actcache.solvers.aggregators import (
        AGGREGATORS,
        Aggregator,
        linear_aggregator,
        logistic_aggregator,
        logistic_l1_aggregator,
        mean_aggregator,
        pair_store,
        paired_samples,
        pca_aggregator,
        pca_center_aggregator,
        pca_diff_aggregator,
    )
    from actcache.solvers.caa import caa_direction, caa_directions, normalize
    from actcache.solvers.errors import SolverInputError
    from actcache.solvers.evaluate import projection_auroc
    from actcache.solvers.heads import (
        HeadRanking,
        head_write_projection,
        rank_heads,
        rank_heads_from_totals,
        top_write_heads,
    )
    from actcache.solvers.job import SolveResult, SolveSettings, solve_cache, triage_summary
    from actcache.solvers.job_inputs import LabelSpec
    from actcache.solvers.labels import DocumentLike, LabelSets, Pair, field_labels, story_labels
    from actcache.solvers.layer_pass import LayerPass, LayerStats, PassPlan, subspace_batches
    from actcache.solvers.layer_weights import LayerWeights, WeightLookup
    from actcache.solvers.memory_budget import parse_bytes
    from actcache.solvers.pooling import Pooling, parse_pooling
    from actcache.solvers.quality import (
        concept_quality,
        middle_layer,
        nearest_concepts,
        neuron_alignment,
        story_statistics,
        triage,
        variance_ratios,
    )
    from actcache.solvers.readout import Readout, read_readout, write_readout
    from actcache.solvers.report import triage_report
    from actcache.solvers.ridge import RidgeResult, ridge_reconstruction
    from actcache.solvers.subspace import (
        SubspaceEigen,
        SubspaceResult,
        oriented_direction,
        subspace_direction,
        subspace_eigen,
        trajectory_basis,
    )
    from actcache.solvers.sufficient_stats import MomentTotals, PooledStore, ProjectorTotals
    from actcache.solvers.sweep import SweepResult, SweepSettings, sweep_cache
else:
    from actcache._lazy import lazy_exports

    __getattr__, __dir__ = lazy_exports(__name__, __file__)

__all__ = [
    "WeightLookup",
    "LayerWeights",
    "sweep_cache",
    "SweepSettings",
    "SweepResult",
    "subspace_eigen",
    "oriented_direction",
    "SubspaceEigen",
    "parse_bytes",
    "LabelSpec",
    "triage_summary",
    "solve_cache",
    "SolveSettings",
    "SolveResult",
    "AGGREGATORS",
    "Aggregator",
    "DocumentLike",
    "HeadRanking",
    "LabelSets",
    "LayerPass",
    "LayerStats",
    "MomentTotals",
    "Pair",
    "PassPlan",
    "PooledStore",
    "Pooling",
    "ProjectorTotals",
    "Readout",
    "RidgeResult",
    "SolverInputError",
    "SubspaceResult",
    "caa_direction",
    "caa_directions",
    "concept_quality",
    "field_labels",
    "head_write_projection",
    "linear_aggregator",
    "logistic_aggregator",
    "logistic_l1_aggregator",
    "mean_aggregator",
    "middle_layer",
    "nearest_concepts",
    "neuron_alignment",
    "normalize",
    "pair_store",
    "paired_samples",
    "parse_pooling",
    "pca_aggregator",
    "pca_center_aggregator",
    "pca_diff_aggregator",
    "projection_auroc",
    "rank_heads",
    "rank_heads_from_totals",
    "read_readout",
    "ridge_reconstruction",
    "story_labels",
    "story_statistics",
    "subspace_batches",
    "subspace_direction",
    "trajectory_basis",
    "top_write_heads",
    "triage",
    "triage_report",
    "variance_ratios",
    "write_readout",
]
