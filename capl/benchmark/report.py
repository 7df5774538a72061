"""Whole-model benchmark blocks, before/after comparison and a console table."""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from capl.benchmark._masks import has_masks
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
    measure_interleaved,
    measure_latency_onnxruntime,
    measure_latency_torch,
    ort_timer,
    peak_memory,
    torch_timer,
)
from capl.benchmark.onnx_export import EXPORTERS, Exporter, export_onnx
from capl.benchmark.size import sparse_size_bytes, state_dict_size_bytes

logger = logging.getLogger(__name__)

BACKENDS: tuple[str, ...] = ("torch", "onnxruntime")
SPARSE_AUTO_THRESHOLD = 0.1
"""With ``sparse_size=None``, the sparse size is computed for masked models and for models
whose parameters are at least this fraction zeros."""


def batch_key(batch_size: int) -> str:
    """The JSON key of a batch size in result dicts (``"bs32"``)."""
    return f"bs{int(batch_size)}"


def _validate(batch_sizes: Sequence[int], backends: Sequence[str], exporter: str) -> None:
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        raise ValueError(f"unknown backend(s) {unknown}; valid: {list(BACKENDS)}")
    if not batch_sizes or any(int(b) < 1 for b in batch_sizes):
        raise ValueError(f"batch_sizes must be positive integers, got {list(batch_sizes)}")
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {list(EXPORTERS)}, got {exporter!r}")


def _ort_threads(ort_threads: int | None, torch_threads: int | None) -> int:
    """ONNX Runtime intra-op threads: explicit, else the torch setting (same cores for both)."""
    for threads in (ort_threads, torch_threads):
        if threads is not None:
            return int(threads)
    return torch.get_num_threads()


def profile_model(
    model: nn.Module,
    input_shape: tuple[int, ...],
    batch_sizes: Sequence[int] = (1, 32),
    backends: Sequence[str] = BACKENDS,
    device: str | torch.device = "cpu",
    ort_threads: int | None = None,
    torch_threads: int | None = None,
    workdir: str | os.PathLike | None = None,
    name: str = "model",
    warmup: int = 10,
    repeats: int = 50,
    min_time_s: float = 1.0,
    seed: int = 0,
    memory: bool = True,
    sparse_size: bool | None = None,
    exporter: Exporter = "auto",
    latency: bool = True,
) -> dict[str, Any]:
    """Everything capl measures about one model except accuracy.

    Steps that depend on external tooling (ptflops, ONNX export, ONNX Runtime, the profiler)
    are isolated: a failure is logged, recorded under ``"errors"`` and leaves ``None`` or a
    missing entry, so one exotic layer does not lose the whole benchmark. The model itself is
    not modified (outputs, training flags, hooks and attributes are as before).

    Args:
        model: The network.
        input_shape: ``(C, H, W)`` of one image (the DataModule's ``input_shape``).
        batch_sizes: Batch sizes to time and measure memory for.
        backends: Subset of ``("torch", "onnxruntime")``.
        device: ``"cpu"`` or ``"cuda"``.
        ort_threads: ONNX Runtime intra-op threads; ``None`` uses the torch thread count so
            both backends get the same cores.
        torch_threads: ``torch.set_num_threads`` during timing; ``None`` keeps the current one.
        workdir: Folder to keep ``<name>.onnx`` in; ``None`` uses a temporary folder that is
            removed afterwards.
        name: File stem for the ONNX file.
        warmup: Untimed runs per measurement.
        repeats: Minimum timed runs per measurement.
        min_time_s: Minimum timed seconds per measurement.
        seed: Seed of the (identical) inputs.
        memory: Measure peak memory per batch size.
        sparse_size: Compute :func:`sparse_size_bytes` (``None``: when masked or at least
            10% of parameters are zero).
        exporter: ONNX exporter, see :func:`capl.benchmark.export_onnx`.
        latency: Time the model here; ``False`` leaves ``latency_ms`` empty (the ONNX file is
            still exported) so that :func:`paired_latency` can time models side by side.

    Returns:
        ``{"input_shape", "masked", "macs", "conv_linear_macs", "params", "nonzero_params",
        "size_bytes", "sparse_size_bytes", "latency_ms": {backend: {"bs<N>": latency}},
        "peak_memory": {"bs<N>": memory}, "peak_memory_bytes", "peak_memory_method",
        "peak_memory_batch_size", "onnx", "layers", "errors", "profile_seconds"}``, where
        ``latency`` is the dict of :func:`measure_latency_torch` /
        :func:`measure_latency_onnxruntime`, ``memory`` that of :func:`peak_memory` and the
        ``peak_memory_*`` headline fields are those of the largest batch size.
    """
    _validate(batch_sizes, backends, exporter)
    start = time.perf_counter()
    shape = tuple(int(d) for d in input_shape)
    errors: dict[str, str] = {}
    threads = _ort_threads(ort_threads, torch_threads)
    steps = ["MACs", "size"] + (["ONNX export"] if "onnxruntime" in backends else [])
    steps += (["latency"] if latency else []) + (["peak memory"] if memory else [])
    logger.info("profiling %s: %s", name, ", ".join(steps))

    def attempt(key: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as error:
            logger.warning("benchmark step %r failed for %s: %s", key, name, error)
            errors[key] = f"{type(error).__name__}: {error}"
            return None

    params = count_params(model)
    nonzero = count_nonzero_params(model)
    masked = has_masks(model)
    want_sparse = sparse_size
    if want_sparse is None:
        want_sparse = masked or (params > 0 and 1 - nonzero / params >= SPARSE_AUTO_THRESHOLD)
    block: dict[str, Any] = {
        "input_shape": list(shape),
        "masked": masked,
        "macs": attempt("macs", count_macs, model, shape),
        "conv_linear_macs": attempt("conv_linear_macs", count_conv_linear_macs, model, shape),
        "params": params,
        "nonzero_params": nonzero,
        "size_bytes": state_dict_size_bytes(model),
        "sparse_size_bytes": sparse_size_bytes(model) if want_sparse else None,
        "latency_ms": {},
        "peak_memory": {},
        "onnx": None,
    }
    timing = {"warmup": warmup, "repeats": repeats, "min_time_s": min_time_s, "seed": seed}
    if "torch" in backends and latency:
        block["latency_ms"]["torch"] = {}
        for batch in batch_sizes:
            result = attempt(
                f"latency.torch.{batch}",
                measure_latency_torch,
                model,
                shape,
                int(batch),
                device=device,
                threads=torch_threads,
                **timing,
            )
            if result is not None:
                block["latency_ms"]["torch"][batch_key(batch)] = result
    if "onnxruntime" in backends:
        with tempfile.TemporaryDirectory(prefix="capl-onnx-") as tmp:
            onnx_path = Path(workdir if workdir is not None else tmp) / f"{name}.onnx"
            info = attempt(
                "onnx_export",
                export_onnx,
                model,
                onnx_path,
                shape,
                dynamic_batch=True,
                exporter=exporter,
            )
            if info is not None:
                if workdir is None:
                    info["path"] = None  # the temporary file is gone after this block
                block["onnx"] = info
                block["latency_ms"]["onnxruntime"] = {}
                for batch in batch_sizes if latency else ():
                    result = attempt(
                        f"latency.onnxruntime.{batch}",
                        measure_latency_onnxruntime,
                        onnx_path,
                        shape,
                        int(batch),
                        threads=threads,
                        device=device,
                        **timing,
                    )
                    if result is not None:
                        block["latency_ms"]["onnxruntime"][batch_key(batch)] = result
    if memory:
        for batch in batch_sizes:
            result = attempt(
                f"peak_memory.{batch}", peak_memory, model, shape, int(batch), device, seed
            )
            if result is not None:
                block["peak_memory"][batch_key(batch)] = result
    # Headline memory figure: the largest batch measured (where activations matter most).
    largest = block["peak_memory"].get(batch_key(max(int(b) for b in batch_sizes)), {})
    block["peak_memory_bytes"] = largest.get("peak_bytes")
    block["peak_memory_method"] = largest.get("method")
    block["peak_memory_batch_size"] = largest.get("batch_size")
    block["layers"] = layer_report(model)
    block["errors"] = errors
    block["profile_seconds"] = time.perf_counter() - start
    return block


def _removed(before: float | None, after: float | None) -> float | None:
    if before is None or after is None or before == 0:
        return None
    return 1.0 - after / before


def _ratio(num: float | None, den: float | None) -> float | None:
    if num is None or den is None or den == 0:
        return None
    return num / den


def _conv_channels(layers: dict[str, dict[str, Any]]) -> int:
    return sum(e["live_out_channels"] for e in layers.values() if e["type"] == "Conv2d")


def realised(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """What the pruning actually bought, from two :func:`profile_model` blocks.

    Channels are the output channels of Conv2d layers holding at least one non-zero weight
    (so filter masks count as removed). Speed-ups are ``before / after`` of median latency per
    backend and batch size; ``efficiency`` is measured over theoretical (MACs) speed-up.
    ``size_ratio`` is base size over pruned size; ``sparse_size_ratio`` is base (dense) size
    over the pruned model's sparse size (``None`` when that was not computed).

    Args:
        before: Block of the base model.
        after: Block of the pruned model.

    Returns:
        ``{"channels_before", "channels_after", "channels_removed", "params_removed",
        "nonzero_params_removed", "macs_removed", "conv_linear_macs_removed",
        "size_ratio", "sparse_size_ratio", "theoretical_speedup",
        "measured_speedup": {backend: {"bs<N>": float}},
        "efficiency": {backend: {"bs<N>": float}}}``; fractions in [0, 1] of the base value,
        ``None`` where either side is missing.
    """
    layers_b = before.get("layers") or {}
    layers_a = after.get("layers") or {}
    channels_b = _conv_channels(layers_b) if layers_b else None
    channels_a = _conv_channels(layers_a) if layers_a else None
    theoretical = _ratio(before.get("macs"), after.get("macs"))
    measured_speedup: dict[str, dict[str, float | None]] = {}
    efficiency: dict[str, dict[str, float | None]] = {}
    lat_b = before.get("latency_ms") or {}
    lat_a = after.get("latency_ms") or {}
    for backend in lat_b:
        for batch in lat_b[backend]:
            if batch not in lat_a.get(backend, {}):
                continue
            measured = _ratio(
                lat_b[backend][batch]["median_ms"], lat_a[backend][batch]["median_ms"]
            )
            measured_speedup.setdefault(backend, {})[batch] = measured
            efficiency.setdefault(backend, {})[batch] = _ratio(measured, theoretical)
    sparse_a = after.get("sparse_size_bytes")
    return {
        "channels_before": channels_b,
        "channels_after": channels_a,
        "channels_removed": _removed(channels_b, channels_a),
        "params_removed": _removed(before.get("params"), after.get("params")),
        "nonzero_params_removed": _removed(
            before.get("nonzero_params"), after.get("nonzero_params")
        ),
        "macs_removed": _removed(before.get("macs"), after.get("macs")),
        "conv_linear_macs_removed": _removed(
            before.get("conv_linear_macs"), after.get("conv_linear_macs")
        ),
        "size_ratio": _ratio(before.get("size_bytes"), after.get("size_bytes")),
        "sparse_size_ratio": _ratio(before.get("size_bytes"), sparse_a),
        "theoretical_speedup": theoretical,
        "measured_speedup": measured_speedup,
        "efficiency": efficiency,
    }


def paired_latency(
    models: list[nn.Module],
    onnx_paths: list[str | os.PathLike | None],
    input_shape: tuple[int, ...],
    batch_sizes: Sequence[int] = (1, 32),
    backends: Sequence[str] = BACKENDS,
    device: str | torch.device = "cpu",
    ort_threads: int | None = None,
    torch_threads: int | None = None,
    warmup: int = 10,
    repeats: int = 50,
    min_time_s: float = 1.0,
    seed: int = 0,
    rounds: int = 4,
) -> list[dict[str, dict[str, Any]]]:
    """Latency of several models measured together (interleaved rounds, identical inputs).

    Use this, not separate :func:`profile_model` latencies, for speed-ups: the models share
    the machine's conditions. A backend whose model has no ONNX file is left out for all.
    Arguments are those of :func:`profile_model` (``ort_threads=None`` follows
    ``torch_threads``, then the current torch thread count), plus ``rounds`` of
    :func:`measure_interleaved`.

    Returns:
        Per model ``{backend: {"bs<N>": summary}}`` (the ``latency_ms`` block).
    """
    threads = _ort_threads(ort_threads, torch_threads)
    out: list[dict[str, dict[str, Any]]] = [{} for _ in models]
    runnable = [b for b in backends if b == "torch" or all(p is not None for p in onnx_paths)]
    total, step, start = len(runnable) * len(batch_sizes), 0, time.perf_counter()
    for backend in runnable:
        for batch in batch_sizes:
            step += 1
            logger.info(
                "latency %d/%d: %s bs%d, %d models in %d alternating rounds (elapsed %.0fs)",
                step, total, backend, batch, len(models), rounds, time.perf_counter() - start,
            )  # fmt: skip
            if backend == "torch":
                timers = [
                    torch_timer(m, input_shape, int(batch), device, seed, torch_threads)
                    for m in models
                ]
            else:
                timers = [
                    ort_timer(p, input_shape, int(batch), threads, device, seed)
                    for p in onnx_paths
                    if p is not None
                ]
            results = measure_interleaved(timers, warmup, repeats, min_time_s, rounds)
            for block, result in zip(out, results):
                block.setdefault(backend, {})[batch_key(batch)] = result
    return out


def compare_models(
    before: nn.Module,
    after: nn.Module,
    input_shape: tuple[int, ...],
    **options: Any,
) -> dict[str, Any]:
    """Profile a base and a pruned model the same way and relate them.

    Args:
        before: Base model.
        after: Pruned model.
        input_shape: ``(C, H, W)`` of one image.
        **options: Passed to :func:`profile_model` for both (``name`` is set to ``"before"``
            and ``"after"``).

    Returns:
        ``{"before", "after", "realised", "per_layer", "environment"}``, i.e. the content of
        ``benchmark.json`` apart from accuracy.
    """
    options.pop("name", None)
    block_b = profile_model(before, input_shape, name="before", **options)
    block_a = profile_model(after, input_shape, name="after", **options)
    ort_threads = None
    if "onnxruntime" in options.get("backends", BACKENDS):
        ort_threads = _ort_threads(options.get("ort_threads"), options.get("torch_threads"))
    return {
        "before": block_b,
        "after": block_a,
        "realised": realised(block_b, block_a),
        "per_layer": per_layer_diff(block_b["layers"], block_a["layers"]),
        "environment": environment_info(ort_threads),
    }


def _human(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    for factor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= factor:
            return f"{value / factor:.3f}{suffix}{unit}"
    return f"{value:.0f}{unit}" if float(value).is_integer() else f"{value:.3f}{unit}"


def format_table(before: dict[str, Any], after: dict[str, Any]) -> str:
    """A plain-text summary of two :func:`profile_model` blocks.

    Args:
        before: Block of the base model.
        after: Block of the pruned model; both may hold ``accuracy``/``accuracy_macro``
            (fractions, as the BenchmarkCallback's blocks do).

    Returns:
        Aligned columns ``metric | before | after | after/before``, one line per metric; for
        accuracies the last column is the change in percentage points.
    """
    rows: list[tuple[str, float | None, float | None, str]] = []
    for key, label in (("accuracy", "accuracy"), ("accuracy_macro", "accuracy (macro)")):
        if before.get(key) is not None or after.get(key) is not None:
            rows.append((label, before.get(key), after.get(key), "%"))
    for key, label, unit in (
        ("macs", "MACs (ptflops)", ""),
        ("conv_linear_macs", "MACs (conv+linear)", ""),
        ("params", "params", ""),
        ("nonzero_params", "non-zero params", ""),
        ("size_bytes", "size", "B"),
        ("sparse_size_bytes", "sparse size", "B"),
    ):
        rows.append((label, before.get(key), after.get(key), unit))
    for backend, per_batch in (before.get("latency_ms") or {}).items():
        for batch, lat in per_batch.items():
            other = (after.get("latency_ms") or {}).get(backend, {}).get(batch, {})
            for stat in ("median_ms", "p90_ms"):
                label = f"{backend} {batch} {stat.split('_')[0]} ms"
                rows.append((label, lat.get(stat), other.get(stat), "ms"))
    for batch, mem in (before.get("peak_memory") or {}).items():
        other = (after.get("peak_memory") or {}).get(batch, {})
        rows.append((f"peak memory {batch}", mem.get("peak_bytes"), other.get("peak_bytes"), "B"))

    def cell(value: float | None, unit: str) -> str:
        if value is None:
            return "-"
        if unit == "%":
            return f"{100 * value:.2f} %"
        return f"{value:.3f}" if unit == "ms" else _human(value, unit)

    def change(b: float | None, a: float | None, unit: str) -> str:
        if unit == "%":
            return "-" if a is None or b is None else f"{100 * (a - b):+.2f} pp"
        ratio = _ratio(a, b)
        return "-" if ratio is None else f"{ratio:.3f}"

    lines = [("metric", "before", "after", "after/before")]
    for label, b, a, unit in rows:
        lines.append((label, cell(b, unit), cell(a, unit), change(b, a, unit)))
    widths = [max(len(line[i]) for line in lines) for i in range(4)]
    out = []
    for index, line in enumerate(lines):
        out.append(
            "  ".join(
                cell_text.ljust(widths[i]) if i == 0 else cell_text.rjust(widths[i])
                for i, cell_text in enumerate(line)
            ).rstrip()
        )
        if index == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)
