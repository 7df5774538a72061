"""What the numbers were measured on: device, library versions, threads, CPU and GPU."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from typing import Any

import torch

PACKAGES: tuple[str, ...] = (
    "torch",
    "torchvision",
    "lightning",
    "onnxruntime",
    "onnx",
    "ptflops",
    "torch-pruning",
    "numpy",
)


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    """The CPU model name (``/proc/cpuinfo`` on Linux, else ``platform.processor()``)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment_info(ort_threads: int | None = None) -> dict[str, Any]:
    """Describe the machine and software stack of a benchmark.

    Args:
        ort_threads: ONNX Runtime intra-op threads used (``None`` if ORT was not timed).

    Returns:
        ``{"device", "cuda_device", "cuda_version", "torch", "torchvision", "lightning",
        "onnxruntime", "onnx", "ptflops", "torch_pruning", "numpy" (versions, ``None`` if not
        installed), "python", "platform", "cpu_model", "cpu_count", "cpu_affinity",
        "threads" (torch intra-op), "interop_threads", "onnxruntime_threads",
        "onnxruntime_providers"}``.
    """
    cuda = torch.cuda.is_available()
    try:
        import onnxruntime as ort

        providers = list(ort.get_available_providers())
    except ImportError:
        providers = []
    try:
        affinity: int | None = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    info: dict[str, Any] = {
        "device": "cuda" if cuda else "cpu",
        "cuda_device": torch.cuda.get_device_name(0) if cuda else None,
        "cuda_version": torch.version.cuda,
    }
    info.update({name.replace("-", "_"): _version(name) for name in PACKAGES})
    info.update(
        {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpu_model": cpu_model(),
            "cpu_count": os.cpu_count(),
            "cpu_affinity": affinity,
            "threads": torch.get_num_threads(),
            "interop_threads": torch.get_num_interop_threads(),
            "onnxruntime_threads": ort_threads,
            "onnxruntime_providers": providers,
        }
    )
    return info
