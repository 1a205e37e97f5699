"""Split decoder layers into contiguous pipeline stages balanced by weight bytes.

The heaviest stage bounds both what must fit on one GPU and the pipeline's throughput, so the split first
minimises it (exactly: binary search on the bottleneck with a greedy feasibility test), then, among splits with
that bottleneck, picks the most even one (least sum of squared stage loads, by dynamic programming). For layers of
equal size this puts every stage within one layer's bytes of every other; in general two neighbouring stages
differ by at most the layer on their boundary.
"""

from __future__ import annotations

from actcache.cluster._plan_error import PlanError

__all__ = ["partition_layers"]


def partition_layers(layer_weight_bytes: list[int], n_stages: int, first_stage_extra: int = 0) -> list[range]:
    """Contiguous ranges covering layers 0..len-1, one per stage; stage 0 also carries `first_stage_extra` bytes
    (the embedding). Every stage gets at least one layer."""
    n = len(layer_weight_bytes)
    if n_stages < 1:
        raise PlanError(f"{n_stages} pipeline stages: a plan needs at least one stage")
    if n_stages > n:
        raise PlanError(f"{n_stages} stages for {n} layers to load: use at most {n} stages (or more replicas)")
    if min(layer_weight_bytes) < 0 or first_stage_extra < 0:
        raise PlanError("layer weight bytes must be non-negative")
    prefix = [first_stage_extra]
    for nbytes in layer_weight_bytes:
        prefix.append(prefix[-1] + nbytes)
    cap = _min_bottleneck(layer_weight_bytes, n_stages, first_stage_extra)
    bounds = _most_even_split(prefix, n_stages, cap)
    return [range(a, b) for a, b in zip(bounds, bounds[1:], strict=False)]


def _stages_needed(weights: list[int], cap: int, first_stage_extra: int) -> int:
    """Fewest contiguous stages whose loads stay within `cap` (greedy fill is optimal for this)."""
    stages, load = 1, first_stage_extra + weights[0]
    for nbytes in weights[1:]:
        if load + nbytes > cap:
            stages, load = stages + 1, nbytes
        else:
            load += nbytes
    return stages


def _min_bottleneck(weights: list[int], n_stages: int, first_stage_extra: int) -> int:
    """Smallest achievable heaviest-stage load (with n_stages <= len(weights), splitting more never hurts)."""
    lo = max(max(weights), first_stage_extra + weights[0])
    hi = first_stage_extra + sum(weights)
    while lo < hi:
        mid = (lo + hi) // 2
        if _stages_needed(weights, mid, first_stage_extra) <= n_stages:
            hi = mid
        else:
            lo = mid + 1
    return lo


def _most_even_split(prefix: list[int], n_stages: int, cap: int) -> list[int]:
    """Stage boundaries minimising the sum of squared loads, every load <= cap; prefix[0] is stage 0's extra."""
    n = len(prefix) - 1
    inf = float("inf")

    def load(i: int, j: int) -> int:  # layers [i, j); stage 0 (i == 0) includes the extra via prefix[0]
        return prefix[j] - (0 if i == 0 else prefix[i])

    # cost[k][j]: best sum of squares putting layers [0, j) into k stages; back[k][j]: start of the k-th stage
    cost = [[inf] * (n + 1) for _ in range(n_stages + 1)]
    back = [[0] * (n + 1) for _ in range(n_stages + 1)]
    cost[0][0] = 0
    for k in range(1, n_stages + 1):
        for j in range(k, n - (n_stages - k) + 1):
            for i in range(j - 1, k - 2, -1):
                stage = load(i, j)
                if stage > cap:
                    break  # loads only grow as i moves left
                total = cost[k - 1][i] + stage * stage
                if total < cost[k][j]:
                    cost[k][j], back[k][j] = total, i
    bounds = [n]
    for k in range(n_stages, 0, -1):
        bounds.append(back[k][bounds[-1]])
    return bounds[::-1]
