"""The names of the storage modes (`build --store-as`), cheap to import for the command line; their maths is in
storage/lossy.py."""

from __future__ import annotations

__all__ = ["STORE_MODES", "STORE_AS_HELP"]

STORE_MODES = ("exact", "bfloat16", "fp8", "int8")
STORE_AS_HELP = ("how values are stored: exact (the compute dtype, lossless), or lossy: bfloat16 (2 bytes), fp8 "
                 "(float8_e4m3 with a float32 scale per token, ~1 byte) or int8 (symmetric, a scale per token); a "
                 "lossy build measures its error per token and `actcache info` shows it, `actcache compare` gates it")
