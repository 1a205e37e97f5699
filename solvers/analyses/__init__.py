"""Analyses from cached taps: calibrated probes, nearest-neighbour retrieval, layer geometry (and the logit lens).

Each reads only the cache (at most a few weight tensors), streams with bounded memory and uses scikit-learn/torch
for fitting and metrics; each has its `actcache` subcommand (solvers/analyses/commands.py).
"""

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the exports; at run time each is imported on first use (actcache/_lazy.py)
    from actcache.solvers.analyses.cka import ExactCKA, MinibatchCKA, unbiased_hsic
    from actcache.solvers.analyses.geometry import GeometrySettings, geometry_cache
    from actcache.solvers.analyses.logit_lens import LogitLensSettings, Unembedding, logit_lens_cache
    from actcache.solvers.analyses.neighbors import NeighborSettings, nearest_neighbors, neighbors_cache
    from actcache.solvers.analyses.probe import ProbeSettings, probe_cache
    from actcache.solvers.analyses.probe_metrics import classify_metrics, cluster_metrics, regress_metrics
else:
    from actcache._lazy import lazy_exports

    __getattr__, __dir__ = lazy_exports(__name__, __file__)

__all__ = [
    "ExactCKA",
    "GeometrySettings",
    "LogitLensSettings",
    "MinibatchCKA",
    "NeighborSettings",
    "ProbeSettings",
    "Unembedding",
    "classify_metrics",
    "cluster_metrics",
    "geometry_cache",
    "logit_lens_cache",
    "nearest_neighbors",
    "neighbors_cache",
    "probe_cache",
    "regress_metrics",
    "unbiased_hsic",
]
