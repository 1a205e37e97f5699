"""Pooling for the solvers: the one rule of `actcache.storage.pooled`, under the name the solvers use.

Every solver takes the pooling as a parameter, so one cached token matrix serves last-token, mean and span
readouts without rerunning the model. The rule itself sits in storage so that `CacheReader.pooled` pools
exactly as the solvers do (imports run storage <- solvers, never the other way).
"""

from __future__ import annotations

from actcache.storage.pooled import Pooling, PoolingError, PoolingKind, parse_pooling

__all__ = ["Pooling", "PoolingError", "PoolingKind", "parse_pooling"]
