"""Benchmarks of what pruning bought: MACs, parameters, size, latency, memory, environment.

Plain functions returning JSON-serialisable dicts; ``capl.callbacks.BenchmarkCallback`` is a
thin Lightning adapter over :func:`compare_models` / :func:`profile_model`.
"""

from capl.benchmark._masks import deployable_copy, effective_state_dict, has_masks, masked_tensors
from capl.benchmark.counting import (
    count_conv_linear_macs,
    count_macs,
    count_nonzero_params,
    count_params,
    layer_report,
    per_layer_diff,
)
from capl.benchmark.environment import environment_info
from capl.benchmark.latency import (
    make_input,
    measure_interleaved,
    measure_latency_onnxruntime,
    measure_latency_torch,
    ort_session,
    ort_timer,
    peak_memory,
    torch_timer,
)
from capl.benchmark.onnx_export import export_onnx
from capl.benchmark.report import (
    BACKENDS,
    batch_key,
    compare_models,
    format_table,
    paired_latency,
    profile_model,
    realised,
)
from capl.benchmark.size import (
    sparse_decode,
    sparse_encode,
    sparse_size_bytes,
    state_dict_size_bytes,
)

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
    "layer_report",
    "make_input",
    "masked_tensors",
    "measure_interleaved",
    "measure_latency_onnxruntime",
    "measure_latency_torch",
    "ort_session",
    "ort_timer",
    "paired_latency",
    "peak_memory",
    "per_layer_diff",
    "profile_model",
    "realised",
    "sparse_decode",
    "sparse_encode",
    "sparse_size_bytes",
    "state_dict_size_bytes",
    "torch_timer",
]
