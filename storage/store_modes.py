"""The names of the storage modes (`build --store-as`), cheap to import for the command line; their maths is in
storage/lossy.py."""

from __future__ import annotations

__all__ = ["STORE_MODES", "OUTLIERS", "STORE_AS_HELP"]

STORE_MODES = ("exact", "bfloat16", "fp8", "int8")
# per token, how many largest-magnitude values a new build of a scaled mode keeps exactly beside the codes (the
# fewest that pass the gate with margin on SmolLM2, README "Lossy storage"); recorded as `capture.outliers`
OUTLIERS = {"fp8": 16, "int8": 8}
STORE_AS_HELP = ("how values are stored: exact (the compute dtype, lossless), or lossy: bfloat16 (2 bytes), fp8 "
                 f"(float8_e4m3 with a float32 scale per token and its {OUTLIERS['fp8']} largest values exact, ~1.1 "
                 f"bytes) or int8 (symmetric, a scale per token and its {OUTLIERS['int8']} largest values exact); a "
                 "lossy build measures its error per token and `actcache info` shows it, `actcache compare` gates it")
