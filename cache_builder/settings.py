"""Build settings: the one place for the defaults the command line shows (cheap to import)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from actcache.storage.claims import LEASE_SECONDS
from actcache.storage.errors import InputError
from actcache.storage.store_modes import STORE_MODES

__all__ = ["BuildSettings", "BuildSettingsError"]


class BuildSettingsError(InputError):
    """A build option that cannot work (layers, hooks, sizes, padding side); the message names the fix."""


@dataclass(frozen=True)
class BuildSettings:
    """Everything a build depends on; one place for the defaults the command line shows."""

    model: str
    corpus: str | Path
    out: str | Path
    layers: str | Sequence[int] = "all"
    hooks: Sequence[str] = ("resid_post", "attn_z")
    batch_size: int = 8
    max_length: int = 512
    dtype: str = "float32"
    device: str = "auto"  # single-process build: cpu, cuda, cuda:N or auto (storage.devices.resolve_device)
    unit_tokens: int = 8192
    padding_side: str = "right"
    truncation_side: str = "right"
    progress: bool = True
    store_text: bool = True  # keep each document's text in the cache (False: --no-text, for private corpora)
    store_as: str = "exact"  # exact, or a lossy mode of storage/lossy.py (bfloat16, fp8, int8)
    lease_s: float = LEASE_SECONDS  # how long this writer's claims outlive it: others take its work over after this

    def __post_init__(self) -> None:
        """Sizes that cannot work are refused here, before a model is loaded or a cache folder is made."""
        for option in ("batch_size", "max_length", "unit_tokens"):
            if (value := getattr(self, option)) < 1:
                raise BuildSettingsError(f"--{option.replace('_', '-')} must be at least 1, got {value}")
        if self.lease_s <= 0:
            raise BuildSettingsError(f"--lease-seconds must be positive, got {self.lease_s}")
        if self.store_as not in STORE_MODES:
            raise BuildSettingsError(f"--store-as {self.store_as!r}: use one of {', '.join(STORE_MODES)}")
