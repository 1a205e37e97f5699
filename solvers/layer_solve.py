"""One layer of a solve or sweep: read the (hook, layer) stream once, then compute every requested vector.

Driven by `solvers.run_setup.run_layers`, the one path of `solve` (one pooling, plus the quality report) and
`sweep` (many poolings and methods, compared). The per-(concept, layer) pieces (subspace eigenpairs, aggregator
fits) go through an executor, so they run in process or as Ray tasks alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from actcache.solvers.aggregators import AGGREGATORS, paired_samples
from actcache.solvers.caa import caa_directions
from actcache.solvers.evaluate import projection_auroc, projection_separation
from actcache.solvers.executor import Executor
from actcache.solvers.labels import LabelSets
from actcache.solvers.layer_pass import LayerPass, LayerStats, PassPlan
from actcache.solvers.pooling import Pooling
from actcache.solvers.subspace import SubspaceEigen, oriented_direction, subspace_eigen
from actcache.solvers.sufficient_stats import MomentTotals, ProjectorTotals
from torch import Tensor

if TYPE_CHECKING:
    from actcache.storage import CacheReader

VECTOR_METHODS = ("caa", "subspace", *AGGREGATORS)


class Stream:
    """How to read one cache: the reader, the labels (document order = reader.documents()), the device the
    accumulators live on and the reader's stream block size."""

    def __init__(self, reader: CacheReader, labels: LabelSets, device: str, block_bytes: int) -> None:
        self.reader, self.labels, self.device, self.block_bytes = reader, labels, device, block_bytes
        self.index_of = {k: i for i, k in enumerate(labels.keys)}

    def wanted_keys(self) -> list[str] | None:
        """Keys of fitted and held-out documents, or None when that is every document (no filtering)."""
        used = [k for k, f, t in zip(self.labels.keys, self.labels.fit, self.labels.test, strict=True) if f or t]
        return None if len(used) == len(self.labels.keys) else used


@dataclass(frozen=True)
class LayerRead:
    """A finished pass: the accumulators, and the held-out documents pooled per pooling."""

    stats: LayerStats
    test_docs: list[int]
    test_pooled: dict[str, Tensor]  # pooling name -> (n_test, d) float32


def read_layer(stream: Stream, hook: str, layer: int, width: int, plan: PassPlan,
               test_poolings: Sequence[Pooling] = (), keys: Sequence[str] | None = None) -> LayerRead:
    """Feed every fitted document of (hook, layer) (or of `keys`) to a `LayerPass`; pool held-out ones."""
    labels = stream.labels
    lp = LayerPass(labels, width, plan, device=stream.device, source=f"{hook} layer {layer}")
    test_docs: list[int] = []
    pooled: dict[str, list[Tensor]] = {str(p): [] for p in test_poolings}
    wanted = stream.wanted_keys() if keys is None else keys
    for doc, rows in stream.reader.iter_activations(hook, layer, wanted, block_bytes=stream.block_bytes,
                                                    check_finite=True):
        i = stream.index_of[doc.key]
        if labels.fit[i]:
            lp.feed(i, rows)
        elif labels.test[i] and test_poolings:
            h = torch.from_numpy(rows)  # (n_tok, d)
            test_docs.append(i)
            for p in test_poolings:
                pooled[str(p)].append(p(h, doc.key).float().clone())  # not a view into the stream block
    stacked = {name: torch.stack(rows) if rows else torch.empty(0, width) for name, rows in pooled.items()}
    return LayerRead(lp.finish(), test_docs, stacked)


def _eigen_task(total: Tensor, n_total: int, concept_total: Tensor, n_concept: int, eigen_k: int) -> SubspaceEigen:
    return subspace_eigen(total, n_total, concept_total, n_concept, eigen_k=eigen_k)


def _aggregate_task(name: str, pos: Tensor, neg: Tensor) -> Tensor:
    return AGGREGATORS[name]()(pos, neg)


def subspace_eigens(stream: Stream, layer: int, width: int, first: LayerStats, batches: Sequence[Sequence[int]],
                    executor: Executor, eigen_k: int) -> dict[int, SubspaceEigen]:
    """Eigenpairs of every concept's M_pos - M_base at `layer`.

    The first batch's T_c come from the main pass; each later batch re-reads only its own positives
    (`subspace_batches`), so the d x d totals never exceed the memory budget.
    """
    labels = stream.labels
    if first.projectors is None:
        raise ValueError("the main pass kept no projector totals: plan it with subspace_concepts")
    total, n_total = first.projectors.total()
    shared = executor.share(total)
    handles: dict[int, object] = {}
    for k, batch in enumerate(batches):
        projectors: ProjectorTotals | None = first.projectors
        if k:
            plan = PassPlan((), subspace_concepts=tuple(batch), subspace_total=False)
            keys = [labels.keys[i] for c in batch for i in labels.positives(c)]
            projectors = read_layer(stream, "resid_post", layer, width, plan, keys=keys).stats.projectors
        assert projectors is not None  # both plans track projector totals
        for c in batch:
            concept_total, n_concept = projectors.concept_total(c)
            handles[c] = executor.submit(_eigen_task, shared, n_total, concept_total, n_concept, eigen_k)
            projectors.release(c)  # frees T_c before the next batch is read
    return dict(zip(handles, executor.gather(list(handles.values())), strict=True))


def layer_vectors(labels: LabelSets, stats: LayerStats, poolings: Sequence[Pooling], methods: Sequence[str],
                  eigens: Mapping[int, SubspaceEigen] | None, executor: Executor) -> dict[tuple[str, str], Tensor]:
    """(pooling name, method) -> unit vectors (C, d) float32 for every requested vector method."""
    n_c = len(labels.concepts)
    out: dict[tuple[str, str], Tensor] = {}
    jobs: dict[tuple[str, str, int], object] = {}
    for pooling in poolings:
        name = str(pooling)
        moments = stats.moments[name]
        for method in methods:
            if method == "caa":
                out[(name, method)] = caa_directions(moments)
            elif method == "subspace":
                if eigens is None:
                    raise ValueError("subspace vectors need the eigenpairs of the layer")
                out[(name, method)] = torch.stack(
                    [oriented_direction(eigens[c], moments.diff(c)).vector for c in range(n_c)]
                )
            else:
                for c in range(n_c):
                    pos, neg = paired_samples(labels, stats.pairs[name], c)
                    jobs[(name, method, c)] = executor.submit(_aggregate_task, method, pos, neg)
    results = dict(zip(jobs, executor.gather(list(jobs.values())), strict=True))
    for name, method, _ in jobs:
        out[(name, method)] = torch.stack([results[(name, method, c)].cpu() for c in range(n_c)])
    # unit rows: a subspace vector whose eigenvalues are below the 1e-6 norm floor comes out shorter than 1
    return {k: torch.nn.functional.normalize(v.cpu().float(), dim=1, eps=1e-30) for k, v in out.items()}


def heldout_scores(vectors: Tensor, read: LayerRead, pooling: Pooling, moments: MomentTotals,
                   labels: LabelSets) -> dict[str, list[float | None]]:
    """Per concept on the test split: AUROC of the projections, the balanced accuracy of the threshold halfway
    between the projected train means of positives and negatives, and the separation in standard deviations."""
    pooled = read.test_pooled[str(pooling)]
    members = labels.membership(read.test_docs)  # (n_test, C): a document may be a positive of several concepts
    auroc: list[float | None] = [None] * vectors.shape[0]
    separation: list[float | None] = [None] * vectors.shape[0]
    if read.test_docs:
        auroc = projection_auroc(vectors, pooled, members)
        separation = projection_separation(vectors, pooled, members)
    accuracy: list[float | None] = []
    truth = torch.from_numpy(members)
    for c in range(vectors.shape[0]):
        if auroc[c] is None:
            accuracy.append(None)
            continue
        v = vectors[c].double()
        mean_pos, mean_neg = moments.means(c)
        threshold = float(v @ (mean_pos.cpu() + mean_neg.cpu()) / 2)
        predicted = (pooled.double() @ v) > threshold
        positive = truth[:, c]
        tpr = float(predicted[positive].double().mean())
        tnr = float((~predicted[~positive]).double().mean())
        accuracy.append((tpr + tnr) / 2)
    return {"auroc": auroc, "balanced_accuracy": accuracy, "separation": separation}
