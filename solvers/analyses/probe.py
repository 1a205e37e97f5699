"""`actcache probe`: linear probes on cached taps, fitted on the train split and scored on the test split.

Document-level poolings (`last`, `mean`, ...) read one pooled row per document (`CacheReader.pooled`), standardise
with the train mean/std and fit scikit-learn: `LogisticRegression(C=1/l2)` (classify), `Ridge(alpha=l2)` (regress),
`KMeans` with as many clusters as label values (cluster). `--pooling token` streams every labelled token instead
(token_probe.py: the same optima, reached by streamed Newton steps and sufficient statistics), so memory never
holds the split's tokens. Outputs: `metrics.json` (per layer, test split) and `predictions.jsonl`
(one line per sample of both splits, so every metric can be recomputed from it).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np
from actcache.solvers.analyses.probe_metrics import classify_metrics, cluster_metrics, regress_metrics
from actcache.solvers.analyses.probe_targets import DocTargets, ProbeTargets, Task, probe_targets
from actcache.solvers.analyses.token_probe import (
    FitSettings,
    fit_token_probe,
    labelled_rows,
    predict_tokens,
)

if TYPE_CHECKING:
    from actcache.storage.reader import CacheReader

__all__ = ["ProbeResult", "ProbeSettings", "probe_cache"]

TOKEN_POOLING = "token"


@dataclass(frozen=True)
class ProbeSettings:
    label_field: str
    task: Task = "classify"
    layers: str = "all"
    pooling: str = "last"  # a document pooling (last, mean, mean-skip:K, span:A:B) or "token"
    hook: str = "resid_post"
    positive: str | None = None
    split_field: str | None = "split"
    train_value: str = "train"
    test_value: str = "test"
    fit: FitSettings = field(default_factory=FitSettings)  # penalty, seed; token level: batches, device
    overwrite: bool = False


@dataclass(frozen=True)
class ProbeResult:
    out: Path
    metrics: dict[str, dict[str, Any]]
    task: Task

    def summary(self) -> str:
        shown = {"classify": ("auroc", "ece", "brier"), "regress": ("pearson", "mae", "mae_recalibrated"),
                 "cluster": ("nmi", "ari")}[self.task]
        lines = [f"probe ({self.task}) -> {self.out}"]
        for layer, m in self.metrics.items():
            lines.append(f"  layer {layer}: " + ", ".join(f"{k} {m[k]:.4f}" for k in shown))
        return "\n".join(lines)


@dataclass
class _Samples:
    """Targets and predictions of one layer, per split (scalars only: memory is a float per sample)."""

    y: dict[str, list[np.ndarray]] = field(default_factory=lambda: {"train": [], "test": []})
    pred: dict[str, list[np.ndarray]] = field(default_factory=lambda: {"train": [], "test": []})

    def add(self, doc: DocTargets, pred: np.ndarray, layer: int, token_level: bool, sink: IO[str]) -> None:
        """Record the document's labelled samples and write them to predictions.jsonl."""
        keep = np.flatnonzero(np.isfinite(doc.y))
        self.y[doc.split].append(doc.y[keep])
        self.pred[doc.split].append(pred[keep])
        for i in keep:
            prediction = int(pred[i]) if pred.dtype.kind == "i" else float(pred[i])
            sink.write(json.dumps({"layer": layer, "key": doc.key, "token_index": int(i) if token_level else None,
                                   "split": doc.split, "label": doc.labels[i], "prediction": prediction}) + "\n")

    def metrics(self, task: Task) -> dict[str, Any]:
        y = {s: np.concatenate(v) for s, v in self.y.items()}
        p = {s: np.concatenate(v) for s, v in self.pred.items()}
        if task == "classify":
            out = classify_metrics(y["test"], p["test"])
        elif task == "regress":
            out = regress_metrics(y["test"], p["test"], y["train"], p["train"])
        else:
            out = cluster_metrics(y["test"].astype(int), p["test"].astype(int))
        return {**out, "n_train": len(y["train"])}


def _document_layer(reader: CacheReader, layer: int, targets: ProbeTargets, settings: ProbeSettings,
                    sink: IO[str]) -> dict[str, Any]:
    """Pool, standardise on train, fit scikit-learn, predict both splits."""
    from sklearn.cluster import KMeans
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.preprocessing import StandardScaler

    by_key = {d.key: d for d in targets.docs}
    x, keys, _ = reader.pooled(settings.hook, layer, settings.pooling, where=lambda d: d.key in by_key)  # (n, d)
    docs = [by_key[k] for k in keys]
    train = np.array([d.split == "train" for d in docs])
    y = np.array([d.y[0] for d in docs])
    z = StandardScaler().fit(x[train]).transform(x)
    if settings.task == "classify":
        logistic = LogisticRegression(C=1 / settings.fit.l2, max_iter=5000)
        pred = logistic.fit(z[train], y[train]).predict_proba(z)[:, 1]
    elif settings.task == "regress":
        pred = Ridge(alpha=settings.fit.l2).fit(z[train], y[train]).predict(z)
    else:
        kmeans = KMeans(n_clusters=len(targets.classes), n_init=10, random_state=settings.fit.seed)
        pred = kmeans.fit(z[train]).predict(z).astype(np.int64)
    samples = _Samples()
    for k, doc in enumerate(docs):
        samples.add(doc, pred[k:k + 1], layer, False, sink)
    return samples.metrics(settings.task)


def _token_layer(reader: CacheReader, layer: int, targets: ProbeTargets, settings: ProbeSettings,
                 sink: IO[str]) -> dict[str, Any]:
    """Stream: moments, epochs of minibatches, then one prediction pass over both splits."""
    scaler, model = fit_token_probe(reader, settings.hook, layer, targets.split("train"), settings.task,
                                    len(targets.classes), settings.fit)
    samples = _Samples()
    for doc, rows in labelled_rows(reader, settings.hook, layer, targets.docs):
        pred = predict_tokens(model, scaler, rows)
        samples.add(doc, pred.astype(np.int64) if settings.task == "cluster" else pred, layer, True, sink)
    return samples.metrics(settings.task)


def _check_settings(reader: CacheReader, settings: ProbeSettings) -> Sequence[int]:
    from actcache.solvers.analyses.hook_check import require_activation_hook
    from actcache.solvers.job_inputs import resolve_layers
    from actcache.solvers.pooling import parse_pooling
    from actcache.storage.selection import model_layer_count

    require_activation_hook(reader, settings.hook)
    if settings.pooling != TOKEN_POOLING:
        parse_pooling(settings.pooling)
    return resolve_layers(settings.layers, reader.layers, model_layer_count(reader.fingerprint))


def probe_cache(cache: str | Path, out: str | Path, settings: ProbeSettings) -> ProbeResult:
    """Fit and score a probe per layer; `out` gets metrics.json and predictions.jsonl (written atomically)."""
    from actcache.solvers.job_inputs import check_output
    from actcache.storage import open_cache
    from actcache.storage.atomic_dir import atomic_dir

    out_path = check_output(out, settings.overwrite)
    reader = open_cache(cache)
    layers = _check_settings(reader, settings)
    token_level = settings.pooling == TOKEN_POOLING
    targets = probe_targets(reader.documents(), field=settings.label_field, task=settings.task,
                            token_level=token_level, positive=settings.positive, split_field=settings.split_field,
                            train_value=settings.train_value, test_value=settings.test_value,
                            truncation_side=reader.fingerprint.capture.truncation_side)
    fit_layer = _token_layer if token_level else _document_layer
    metrics: dict[str, dict[str, Any]] = {}
    with atomic_dir(out_path, overwrite=settings.overwrite) as tmp:
        with open(tmp / "predictions.jsonl", "w") as sink:
            for layer in layers:
                metrics[str(layer)] = fit_layer(reader, layer, targets, settings, sink)
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    return ProbeResult(out_path, metrics, settings.task)
