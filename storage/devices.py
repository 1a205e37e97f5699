"""Which torch device a command computes on: `--device cpu|cuda|cuda:N|auto`, one rule for builder and solvers.

It lives at the bottom of the import graph so that `cache_builder/` and `solvers/` (which may not import each
other) share it; torch is imported only when a device is resolved, never when a command line is parsed.
"""

from __future__ import annotations

import re

from .errors import InputError

__all__ = ["DEVICE_HELP", "DeviceError", "resolve_device"]

DEVICE_HELP = "cpu, cuda, cuda:N or auto (cuda when a GPU is visible, else cpu)"  # --help adds the default
_CUDA = re.compile(r"cuda(?::(\d+))?")


class DeviceError(InputError):
    """A `--device` that is not a device name, or names a device this machine does not have."""


def resolve_device(device: str) -> str:
    """'cpu', 'cuda', 'cuda:N' or 'auto' -> a torch device string that exists here (auto: cuda when available)."""
    text = device.strip().lower()
    if text == "cpu":
        return "cpu"
    import torch

    if text == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    match = _CUDA.fullmatch(text)
    if match is None:
        raise DeviceError(f"--device {device!r} is not a device: use {DEVICE_HELP}")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise DeviceError(f"--device {device}: no CUDA device is visible here (CUDA_VISIBLE_DEVICES, driver, a CUDA "
                          f"build of torch): use --device cpu or auto")
    if match.group(1) is not None and int(match.group(1)) >= count:
        raise DeviceError(f"--device {device}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}: "
                          f"pick one of those, or --device cuda")
    return text
