"""Profiling of whole models: one model's benchmark block, paired latencies, comparisons.

:func:`profile_model` measures one model (MACs, parameters, sizes, latency per backend and
batch size, peak memory), :func:`shape_profile` only the parts that depend on the architecture
alone (ONNX export, peak memory); :func:`paired_latency` times several models in alternating
rounds so that their speed-ups share the machine's conditions; :func:`compare_models` relates a base
and a pruned model (``realised`` comes from :mod:`capl.benchmark.record`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
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
    interleaved_rounds,
    measure_interleaved,
    measure_latency_onnxruntime,
    measure_latency_torch,
    ort_timer,
    peak_memory,
    torch_timer,
)
from capl.benchmark.onnx_export import EXPORTERS, Exporter, export_onnx
from capl.benchmark.record import realised
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


class _Attempts:
    """Runs tool steps, logging and recording a failing one instead of raising."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.errors: dict[str, str] = {}

    def __call__(self, key: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as error:
            logger.warning("benchmark step %r failed for %s: %s", key, self.name, error)
            self.errors[key] = f"{type(error).__name__}: {error}"
            return None


def _counts(
    model: nn.Module, shape: tuple[int, ...], sparse_size: bool | None, attempt: _Attempts
) -> dict[str, Any]:
    """MACs, parameters and sizes: the block's fields that need no timing."""
    params = count_params(model)
    nonzero = count_nonzero_params(model)
    masked = has_masks(model)
    want_sparse = sparse_size
    if want_sparse is None:
        want_sparse = masked or (params > 0 and 1 - nonzero / params >= SPARSE_AUTO_THRESHOLD)
    return {
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


def _per_batch(
    attempt: _Attempts, step: str, batch_sizes: Sequence[int], fn: Any, *args: Any, **kw: Any
) -> dict[str, Any]:
    """``{"bs<N>": fn(*args, N, **kw)}`` over the batch sizes, failed steps left out."""
    out = {}
    for batch in batch_sizes:
        result = attempt(f"{step}.{batch}", fn, *args, int(batch), **kw)
        if result is not None:
            out[batch_key(batch)] = result
    return out


@contextlib.contextmanager
def _export_folder(workdir: str | os.PathLike | None) -> Iterator[Path]:
    """``workdir``, or a temporary folder removed afterwards."""
    if workdir is not None:
        yield Path(workdir)
        return
    with tempfile.TemporaryDirectory(prefix="capl-onnx-") as tmp:
        yield Path(tmp)


def shape_profile(
    model: nn.Module,
    input_shape: tuple[int, ...],
    batch_sizes: Sequence[int] = (1, 32),
    backends: Sequence[str] = BACKENDS,
    device: str | torch.device = "cpu",
    workdir: str | os.PathLike | None = None,
    name: str = "model",
    exporter: Exporter = "auto",
    seed: int = 0,
    memory: bool = True,
) -> dict[str, Any]:
    """The part of :func:`profile_model` that depends on the architecture only.

    The ONNX export (when ``onnxruntime`` is a backend) and the peak memory per batch size
    depend on the network's shapes, not on its weights' values, so a group of pruned models of
    one architecture measures them once (:func:`capl.benchmark.group.time_jobs`). Arguments
    are those of :func:`profile_model`.

    Returns:
        ``{"onnx", "peak_memory", "peak_memory_bytes", "peak_memory_method",
        "peak_memory_batch_size", "errors"}``; ``onnx["path"]`` is ``<workdir>/<name>.onnx``
        (``None`` without ``workdir``: the temporary file is gone).
    """
    _validate(batch_sizes, backends, exporter)
    shape = tuple(int(d) for d in input_shape)
    attempt = _Attempts(name)
    block: dict[str, Any] = {"onnx": None, "peak_memory": {}}
    if "onnxruntime" in backends:
        with _export_folder(workdir) as folder:
            block["onnx"] = attempt(
                "onnx_export", export_onnx, model, folder / f"{name}.onnx", shape,
                dynamic_batch=True, exporter=exporter,
            )  # fmt: skip
        if workdir is None and block["onnx"]:
            block["onnx"]["path"] = None  # the temporary file is gone
    if memory:
        block["peak_memory"] = _per_batch(
            attempt, "peak_memory", batch_sizes, peak_memory, model, shape, device=device,
            seed=seed,
        )  # fmt: skip
    _memory_headline(block, batch_sizes)
    block["errors"] = attempt.errors
    return block


def _memory_headline(block: dict[str, Any], batch_sizes: Sequence[int]) -> None:
    """Headline memory figure: the largest batch measured (where activations matter most)."""
    largest = block["peak_memory"].get(batch_key(max(int(b) for b in batch_sizes)), {})
    block["peak_memory_bytes"] = largest.get("peak_bytes")
    block["peak_memory_method"] = largest.get("method")
    block["peak_memory_batch_size"] = largest.get("batch_size")


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
    shapes: bool = True,
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
        shapes: Measure the parts that depend on the architecture only (ONNX export, peak
            memory: :func:`shape_profile`); ``False`` leaves ``onnx`` ``None`` and
            ``peak_memory`` empty for a latency group to measure once per architecture.

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
    steps = ["MACs", "size"] + (["ONNX export"] if "onnxruntime" in backends and shapes else [])
    steps += (["latency"] if latency else []) + (["peak memory"] if memory and shapes else [])
    logger.info("profiling %s: %s", name, ", ".join(steps))
    attempt = _Attempts(name)
    block = _counts(model, shape, sparse_size, attempt)
    timing = {"warmup": warmup, "repeats": repeats, "min_time_s": min_time_s, "seed": seed}
    if "torch" in backends and latency:
        block["latency_ms"]["torch"] = _per_batch(
            attempt, "latency.torch", batch_sizes, measure_latency_torch, model, shape,
            device=device, threads=torch_threads, **timing,
        )  # fmt: skip
    if shapes:
        with _export_folder(workdir) as folder:
            part = shape_profile(
                model, shape, batch_sizes, backends, device=device, workdir=folder, name=name,
                exporter=exporter, seed=seed, memory=memory,
            )  # fmt: skip
            onnx_path = (part["onnx"] or {}).get("path")
            if onnx_path is not None and latency:  # timed while the file exists
                block["latency_ms"]["onnxruntime"] = _per_batch(
                    attempt, "latency.onnxruntime", batch_sizes, measure_latency_onnxruntime,
                    onnx_path, shape, threads=_ort_threads(ort_threads, torch_threads),
                    device=device, **timing,
                )  # fmt: skip
        attempt.errors.update(part.pop("errors"))
        block.update(part)
        if workdir is None and block["onnx"]:
            block["onnx"]["path"] = None  # the temporary file is gone after this block
    else:
        _memory_headline(block, batch_sizes)  # no memory measured: the headline fields empty
    block["layers"] = layer_report(model)
    block["errors"] = attempt.errors
    block["profile_seconds"] = time.perf_counter() - start
    return block


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
    rounds: int | None = None,
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
    rounds = interleaved_rounds(rounds, repeats)
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
