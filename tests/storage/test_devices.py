"""The one `--device` rule shared by the builder and the solvers."""

from __future__ import annotations

import pytest
import torch
from actcache.storage.devices import DeviceError, resolve_device


def test_cpu_and_auto() -> None:
    assert resolve_device("cpu") == resolve_device(" CPU ") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("device", ["gpu", "mps", "cuda:x", "cuda:-1", "cuda0", ""])
def test_not_a_device(device: str) -> None:
    with pytest.raises(DeviceError, match="is not a device: use cpu, cuda, cuda:N or auto"):
        resolve_device(device)


def test_cuda_index_must_exist() -> None:
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(DeviceError) as error:
        resolve_device(f"cuda:{count}")
    assert (f"cuda:0 to cuda:{count - 1}" if count else "no CUDA device is visible") in str(error.value)
    for index in range(count):
        assert resolve_device(f"cuda:{index}") == f"cuda:{index}"
