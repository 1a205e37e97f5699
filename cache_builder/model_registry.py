"""Named models in `configs/models/*.yaml`: what each is, where its weights come from, its published config."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from actcache.storage.errors import InputError

__all__ = ["ModelSpec", "CONFIG_DIR", "list_model_names", "load_model_spec", "ModelSpecError"]

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs" / "models"

ModelKind = Literal["tiny", "gguf", "reference"]


class ModelSpecError(InputError):
    """A model name or model YAML that cannot be used."""


@dataclass(frozen=True)
class ModelSpec:
    """One entry of the model registry.

    kind: `tiny` (make-model builds it from `config` with seeded random weights), `gguf` (converted from a GGUF
    file shipped in a Python package), `reference` (published config only: for the planner).
    """

    name: str
    kind: ModelKind
    config: dict[str, Any]
    dtype: str = "float32"
    weight_dtype: str | None = None
    seed: int = 0
    package: str | None = None
    file: str | None = None
    hf_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str) -> ModelSpec:
        known = {"name", "kind", "config", "dtype", "weight_dtype", "seed", "package", "file", "hf_id"}
        missing = [k for k in ("name", "kind", "config") if k not in data]
        if missing:
            raise ModelSpecError(f"{source}: missing field(s) {missing}; every model YAML needs name, kind, config")
        if data["kind"] not in ("tiny", "gguf", "reference"):
            raise ModelSpecError(f"{source}: kind must be tiny, gguf or reference, not {data['kind']!r}")
        if data["kind"] == "gguf" and not (data.get("package") and data.get("file")):
            raise ModelSpecError(f"{source}: a gguf model needs `package` and `file`")
        extra = {k: v for k, v in data.items() if k not in known}
        return cls(**{k: v for k, v in data.items() if k in known}, extra=extra)


def list_model_names() -> list[str]:
    """Names accepted by `--model` and `make-model`."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def load_model_spec(name_or_path: str | Path) -> ModelSpec:
    """Read a registry entry by name, or any model YAML by path."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = CONFIG_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ModelSpecError(
            f"unknown model {str(name_or_path)!r}: give a model directory, a .gguf file, a model YAML, "
            f"or one of {', '.join(list_model_names())}"
        )
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ModelSpecError(f"{path} is not valid YAML: {' '.join(str(error).split())}") from None
    if not isinstance(data, dict):
        raise ModelSpecError(f"{path}: expected a YAML mapping")
    return ModelSpec.from_dict(data, source=str(path))
