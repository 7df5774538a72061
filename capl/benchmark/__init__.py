"""Benchmarks of what pruning bought: MACs, parameters, size, latency, memory, environment.

Plain functions returning JSON-serialisable dicts; ``capl.callbacks.BenchmarkCallback`` is a
thin Lightning adapter over :func:`profile_model` / :func:`paired_latency` and
:func:`capl.benchmark.record.build_record`.

Modules: ``counting`` (MACs, parameters, layer tables), ``size``, ``latency`` / ``timers`` /
``memory``, ``onnx_export``, ``environment``, ``profile`` (one model's block, paired latencies,
comparisons), ``record`` (the benchmark.json record, its sections and key paths; no torch),
``table`` (the console table) and ``tensorboard``. Names are imported on first use, so that
``capl.benchmark.record`` can be read (by ``capl-report``) without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_SOURCES = {
    "_masks": ("deployable_copy", "effective_state_dict", "has_masks", "masked_tensors"),
    "counting": (
        "count_conv_linear_macs",
        "count_macs",
        "count_nonzero_params",
        "count_params",
        "layer_report",
        "per_layer_diff",
    ),
    "environment": ("environment_info",),
    "latency": (
        "interleaved_rounds",
        "make_input",
        "measure_interleaved",
        "measure_latency_onnxruntime",
        "measure_latency_torch",
        "ort_kernel_times",
        "ort_session",
        "ort_timer",
        "peak_memory",
        "profiled_runs",
        "torch_timer",
    ),
    "onnx_export": ("export_onnx",),
    "profile": (
        "BACKENDS",
        "batch_key",
        "compare_models",
        "paired_latency",
        "profile_model",
        "shape_profile",
    ),
    "record": ("realised",),
    "size": ("sparse_decode", "sparse_encode", "sparse_size_bytes", "state_dict_size_bytes"),
    "table": ("format_table",),
}
_MODULE_OF = {name: module for module, names in _SOURCES.items() for name in names}

__all__ = [
    "BACKENDS",
    "batch_key",
    "compare_models",
    "count_conv_linear_macs",
    "count_macs",
    "count_nonzero_params",
    "count_params",
    "deployable_copy",
    "effective_state_dict",
    "environment_info",
    "export_onnx",
    "format_table",
    "has_masks",
    "interleaved_rounds",
    "layer_report",
    "make_input",
    "masked_tensors",
    "measure_interleaved",
    "measure_latency_onnxruntime",
    "measure_latency_torch",
    "ort_kernel_times",
    "ort_session",
    "ort_timer",
    "paired_latency",
    "peak_memory",
    "per_layer_diff",
    "profile_model",
    "profiled_runs",
    "realised",
    "shape_profile",
    "sparse_decode",
    "sparse_encode",
    "sparse_size_bytes",
    "state_dict_size_bytes",
    "torch_timer",
]


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
