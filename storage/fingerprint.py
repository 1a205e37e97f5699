"""What a cache's activations depend on. Appending is allowed only when every field is equal."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from .dtypes import SUPPORTED_DTYPES
from .store_modes import OUTLIERS, STORE_MODES

__all__ = ["CaptureSpec", "CacheFingerprint", "canonical_json", "digest"]


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace: the form every digest is taken over."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def digest(value: Any) -> str:
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()


@dataclass(frozen=True)
class CaptureSpec:
    """Which activations are stored, how documents were cut, and how values are stored (`store_as`: exact, or a
    lossy mode of storage/lossy.py; `outliers`: per token, how many largest-magnitude values an fp8/int8 cache
    keeps exactly beside the codes, 0 in caches made before; an append must use the same)."""

    hooks: tuple[str, ...]
    layers: tuple[int, ...]
    max_length: int
    truncation_side: str = "right"
    store_as: str = "exact"
    outliers: int = 0

    def __post_init__(self) -> None:
        if not self.hooks:
            raise ValueError("a capture spec needs at least one hook")
        if not self.layers:
            raise ValueError("a capture spec needs at least one layer")
        if list(self.layers) != sorted(set(self.layers)):
            raise ValueError(f"layers must be sorted and unique, got {list(self.layers)}")
        if self.truncation_side not in ("left", "right"):
            raise ValueError(f"truncation_side must be left or right, not {self.truncation_side!r}")
        if self.store_as not in STORE_MODES:
            raise ValueError(f"store_as must be one of {', '.join(STORE_MODES)}, not {self.store_as!r}")
        if self.outliers < 0 or (self.outliers and self.store_as not in OUTLIERS):
            raise ValueError(f"outliers must be 0 for store_as={self.store_as} (or >= 0 for "
                             f"{', '.join(OUTLIERS)}), not {self.outliers}")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "hooks": list(self.hooks),
            "layers": list(self.layers),
            "max_length": self.max_length,
            "truncation_side": self.truncation_side,
        }
        if self.store_as != "exact":  # absent means exact: caches made before lossy modes keep their digest
            out["store_as"] = self.store_as
        if self.outliers:  # absent means none: fp8/int8 caches made before outliers keep their digest
            out["outliers"] = self.outliers
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CaptureSpec:
        return cls(
            hooks=tuple(data["hooks"]),
            layers=tuple(int(x) for x in data["layers"]),
            max_length=int(data["max_length"]),
            truncation_side=data.get("truncation_side", "right"),
            store_as=data.get("store_as", "exact"),
            outliers=int(data.get("outliers", 0)),
        )


@dataclass(frozen=True)
class CacheFingerprint:
    """Model, tokenizer, compute dtype and capture spec of a cache.

    `model` and `tokenizer` are JSON mappings made by the builder (config, weight digests, quantization; tokenizer
    digest); `widths` maps each hook to its row width and `hook_attrs` carries per-hook extras (e.g. head shape).
    """

    model: dict[str, Any]
    tokenizer: dict[str, Any]
    dtype: str
    capture: CaptureSpec
    widths: dict[str, int] = field(default_factory=dict)
    hook_attrs: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"unsupported dtype {self.dtype!r}: use one of {', '.join(SUPPORTED_DTYPES)}")
        missing = [h for h in self.capture.hooks if h not in self.widths]
        if missing:
            raise ValueError(f"no width given for hook(s) {missing}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "tokenizer": self.tokenizer,
            "dtype": self.dtype,
            "capture": self.capture.to_dict(),
            "widths": dict(self.widths),
            "hook_attrs": dict(self.hook_attrs),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CacheFingerprint:
        return cls(
            model=data["model"],
            tokenizer=data["tokenizer"],
            dtype=data["dtype"],
            capture=CaptureSpec.from_dict(data["capture"]),
            widths={k: int(v) for k, v in data["widths"].items()},
            hook_attrs=data.get("hook_attrs", {}),
        )

    @property
    def digest(self) -> str:
        """The cache's identity: model, tokenizer, dtype and capture spec (an append must match every field)."""
        return digest(self.to_dict())

    @property
    def model_digest(self) -> str:
        """The model's identity alone: its config and weight digests, whatever dtype or layers were captured."""
        return digest({"config": self.model.get("config"), "weights": self.model.get("weights")})

    def differences(self, other: CacheFingerprint) -> list[str]:
        """Dotted paths of the fields that differ, e.g. `model.config.num_hidden_layers` or `capture.layers`."""
        return _diff_paths(self.to_dict(), other.to_dict(), "")


def _diff_paths(a: Any, b: Any, prefix: str) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        paths: list[str] = []
        for key in sorted(set(a) | set(b), key=str):
            sub = f"{prefix}.{key}" if prefix else str(key)
            if key not in a or key not in b:
                paths.append(sub)
            else:
                paths.extend(_diff_paths(a[key], b[key], sub))
        return paths
    return [] if canonical_json(a) == canonical_json(b) else [prefix]
