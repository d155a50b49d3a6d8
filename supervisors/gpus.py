"""The machine's NVIDIA GPUs, read through NVML: the one reader for placement, the banner,
`dx doctor` and `/metrics`.

NVML is initialised on the first read and kept for the life of the process (initialising it
can take a moment on a big machine; a scrape every few seconds should not pay that each time).
A machine without a driver (or without pynvml) is noticed once and never asked again. Reads
block: call them off the event loop.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Gpu:
    index: int
    name: str
    total: int  # bytes
    free: int  # bytes
    utilization: float = 0.0  # 0..1, over NVML's last sample period

    @property
    def used(self) -> int:
        return self.total - self.free


@dataclass(frozen=True, slots=True)
class Inventory:
    gpus: tuple[Gpu, ...] = ()
    note: str = ""  # why there are none, when there are none
    driver: str = ""  # the NVIDIA driver's version, when NVML answered
    cuda: str = ""  # the CUDA version the driver supports


class NvmlReader:
    def __init__(self) -> None:
        self._lock = threading.Lock()  # reads come from worker threads
        self._nvml: Any = None
        self._absent = ""  # why NVML cannot be used, once found out
        self._driver = ("", "")

    def read(self) -> Inventory:
        with self._lock:
            if self._absent:
                return Inventory(note=self._absent)
            if self._nvml is None:
                try:
                    import pynvml

                    pynvml.nvmlInit()
                except Exception as exc:  # ImportError, NVMLError: "no usable GPU"
                    self._absent = f"no NVIDIA driver (NVML: {exc})"
                    return Inventory(note=self._absent)
                self._nvml = pynvml
                self._driver = _driver(pynvml)
            driver, cuda = self._driver
            try:
                gpus = tuple(_gpu(self._nvml, i) for i in range(self._nvml.nvmlDeviceGetCount()))
            except Exception as exc:
                return Inventory(note=f"NVML failed: {exc}", driver=driver, cuda=cuda)
            note = "" if gpus else "the NVIDIA driver sees no GPU"
            return Inventory(gpus, note, driver=driver, cuda=cuda)


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _driver(nvml: Any) -> tuple[str, str]:
    """(driver version, CUDA version); "?" for what NVML does not say."""
    try:
        version = _text(nvml.nvmlSystemGetDriverVersion())
    except Exception:
        version = "?"
    try:
        cuda = nvml.nvmlSystemGetCudaDriverVersion_v2()
        return version, f"{cuda // 1000}.{cuda % 1000 // 10}"
    except Exception:
        return version, "?"


def _gpu(nvml: Any, index: int) -> Gpu:
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    mem = nvml.nvmlDeviceGetMemoryInfo(handle)
    try:
        util = nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100
    except Exception:  # some GPUs (MIG slices) report no utilisation
        util = 0.0
    name = _text(nvml.nvmlDeviceGetName(handle))
    return Gpu(index, name, int(mem.total), int(mem.free), float(util))


_READER = NvmlReader()


def read_gpus() -> Inventory:
    """The machine's NVIDIA GPUs now (memory is read fresh each time). Blocking."""
    return _READER.read()
