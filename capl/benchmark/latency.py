"""Latency of one inference (PyTorch, ONNX Runtime): the timing protocol and its summaries.

Timing protocol, shared by both backends: identical seeded inputs (:func:`make_input`),
``warmup`` untimed runs, then timed runs until *both* ``repeats`` runs and ``min_time_s``
seconds have been collected, so the median is stable for fast and slow models alike. Every
summary says whether it can be trusted: ``busy`` is set when the medians of its rounds (or of
consecutive chunks; at most six groups of consecutive rounds) spread by more than 20 % or its
p90 exceeds 1.5x the median.

The timers themselves live in :mod:`capl.benchmark.timers` and peak memory in
:mod:`capl.benchmark.memory`; their public names are re-exported here.
"""

from __future__ import annotations

import contextlib
import os
import statistics
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from capl.benchmark.memory import peak_memory
from capl.benchmark.timers import (
    Timer,
    make_input,
    ort_kernel_times,
    ort_session,
    ort_timer,
    preserved_mode,
    profiled_runs,
    torch_timer,
)

__all__ = [
    "BUSY_P90_OVER_MEDIAN",
    "BUSY_ROUND_SPREAD",
    "Timer",
    "interleaved_rounds",
    "make_input",
    "measure_interleaved",
    "measure_latency_onnxruntime",
    "measure_latency_torch",
    "ort_kernel_times",
    "ort_session",
    "ort_timer",
    "peak_memory",
    "preserved_mode",
    "profiled_runs",
    "torch_timer",
]


BUSY_ROUND_SPREAD = 0.2
"""A latency is flagged ``busy`` when its round medians spread by more than this fraction of
the overall median (max - min over median): the machine's load changed while it was timed."""
BUSY_P90_OVER_MEDIAN = 1.5
"""A latency is also flagged ``busy`` when its 90th percentile exceeds the median by this factor: a
long tail of runs that waited for the CPU."""
_CHUNKS = 4  # a single measurement is judged by the medians of this many consecutive chunks
_ROUND_GROUPS = 6  # interleaved rounds are judged in at most this many consecutive groups


def _summary(times_ms: list[float], rounds: list[list[float]] | None = None) -> dict[str, Any]:
    """Summary statistics plus a stability judgement (``busy``).

    Args:
        times_ms: Every timed run.
        rounds: The same runs per alternating round, merged into at most six groups of
            consecutive rounds (a round of one run is no median to judge by); ``None`` splits
            ``times_ms`` into consecutive chunks instead.
    """
    arr = np.asarray(times_ms, dtype=np.float64)
    median = float(statistics.median(times_ms))
    p90 = float(np.percentile(arr, 90))
    if rounds is None:
        chunks = max(1, min(_CHUNKS, len(times_ms) // 2))
        rounds = [list(part) for part in np.array_split(arr, chunks)]
    elif len(rounds) > _ROUND_GROUPS:
        groups = np.array_split(np.arange(len(rounds)), _ROUND_GROUPS)
        rounds = [[ms for i in group for ms in rounds[i]] for group in groups]
    round_medians = [float(statistics.median(r)) for r in rounds if len(r)]
    spread = (max(round_medians) - min(round_medians)) / median if median > 0 else 0.0
    tail = p90 / median if median > 0 else 1.0
    return {
        "median_ms": median,
        "p90_ms": p90,
        "mean_ms": float(arr.mean()),
        "std_ms": float(arr.std(ddof=1)) if arr.size > 1 else 0.0,
        "min_ms": float(arr.min()),
        "repeats": len(times_ms),
        "total_s": float(arr.sum() / 1000.0),
        "round_medians_ms": round_medians,
        "round_spread": spread,
        "p90_over_median": tail,
        "busy": bool(spread > BUSY_ROUND_SPREAD or tail > BUSY_P90_OVER_MEDIAN),
    }


def _check_protocol(warmup: int, repeats: int, min_time_s: float) -> None:
    if warmup < 0 or repeats < 1 or min_time_s < 0:
        raise ValueError(
            f"need warmup >= 0, repeats >= 1, min_time_s >= 0; got {warmup}, {repeats}, "
            f"{min_time_s}"
        )


def _time_loop(
    step: Callable[[], float], warmup: int, repeats: int, min_time_s: float
) -> list[float]:
    """Run ``step`` (returns ms) ``warmup`` times, then until both count and time are met."""
    for _ in range(warmup):
        step()
    times: list[float] = []
    elapsed = 0.0
    while len(times) < repeats or elapsed < min_time_s:
        ms = step()
        times.append(ms)
        elapsed += ms / 1000.0
    return times


def measure_latency_torch(
    model: nn.Module,
    input_shape: tuple[int, ...],
    batch_size: int = 1,
    device: str | torch.device = "cpu",
    warmup: int = 10,
    repeats: int = 50,
    min_time_s: float = 1.0,
    seed: int = 0,
    threads: int | None = None,
) -> dict[str, Any]:
    """Forward-pass latency in PyTorch (eval mode, ``torch.inference_mode``).

    Args:
        model: The network; its training flags are restored afterwards and masked models are
            timed on a copy with masks made permanent.
        input_shape: ``(C, H, W)`` of one image.
        batch_size: Images per forward.
        device: ``"cpu"`` or ``"cuda"``/``"cuda:N"`` (CUDA events with synchronisation).
        warmup: Untimed forwards first.
        repeats: Minimum number of timed forwards.
        min_time_s: Minimum total timed seconds.
        seed: Input seed (identical inputs across calls and models).
        threads: ``torch.set_num_threads`` for the measurement (restored afterwards);
            ``None`` keeps the current setting.

    Returns:
        ``{"median_ms", "p90_ms", "mean_ms", "std_ms", "min_ms", "repeats", "total_s",
        "round_medians_ms", "round_spread", "p90_over_median", "busy", "batch_size", "device",
        "threads", "backend": "torch"}``; ``busy`` flags a measurement whose chunk medians or
        tail show that the machine's load changed (:data:`BUSY_ROUND_SPREAD`,
        :data:`BUSY_P90_OVER_MEDIAN`).
    """
    _check_protocol(warmup, repeats, min_time_s)
    with torch_timer(model, input_shape, batch_size, device, seed, threads) as (step, info):
        times = _time_loop(step, warmup, repeats, min_time_s)
    return _summary(times) | info


def interleaved_rounds(rounds: int | None, repeats: int) -> int:
    """The number of alternating rounds :func:`measure_interleaved` runs.

    Args:
        rounds: As asked; ``None``: one round per timed run (``repeats``).
        repeats: Minimum timed runs per model.
    """
    resolved = repeats if rounds is None else rounds
    if resolved < 1:
        raise ValueError(f"rounds must be >= 1, got {resolved}")
    return resolved


def measure_interleaved(
    timers: list[contextlib.AbstractContextManager[tuple[Callable[[], float], dict[str, Any]]]],
    warmup: int = 10,
    repeats: int = 50,
    min_time_s: float = 1.0,
    rounds: int | None = None,
) -> list[dict[str, Any]]:
    """Time several models in alternating rounds, so load changes hit them all alike.

    Comparing a base and a pruned model measured minutes apart on a shared machine mixes
    the speed-up with the machine's mood; here every round times each model in turn (order
    reversed every other round: A B B A ...), each round taking its share of ``repeats`` and
    ``min_time_s``, and each model's summary is over all its rounds. The default, one round
    per timed run, spreads each model's runs evenly over the measurement: on a VM with slow
    phases of a few seconds, identical copies of MobileNetV3-Large timed this way gave
    speed-ups with less than half the spread of 6 rounds of 2 runs each
    (``scripts/bench_interleaving.py``, benchmarks/efficiency.md).

    Args:
        timers: One :func:`torch_timer` / :func:`ort_timer` per model (not yet entered).
        warmup: Untimed runs of each model first.
        repeats: Minimum timed runs per model in total.
        min_time_s: Minimum timed seconds per model in total.
        rounds: Number of alternating rounds; ``None``: ``repeats`` (one timed run per model
            per round, more where ``min_time_s`` asks for them).

    Returns:
        One summary per timer (as :func:`measure_latency_torch` returns, ``round_medians_ms``
        per alternating round, or per group of consecutive rounds when there are more than
        six), plus ``rounds`` and ``interleaved_models`` (how many models shared the rounds).
    """
    _check_protocol(warmup, repeats, min_time_s)
    rounds = interleaved_rounds(rounds, repeats)
    with contextlib.ExitStack() as stack:
        entered = [stack.enter_context(timer) for timer in timers]
        for step, _ in entered:
            for _ in range(warmup):
                step()
        times: list[list[list[float]]] = [[] for _ in entered]
        per_round = -(-repeats // rounds)
        for r in range(rounds):
            order = range(len(entered)) if r % 2 == 0 else reversed(range(len(entered)))
            for i in order:
                times[i].append(_time_loop(entered[i][0], 0, per_round, min_time_s / rounds))
        return [
            _summary([ms for rnd in t for ms in rnd], t)
            | info
            | {"rounds": rounds, "interleaved_models": len(entered)}
            for t, (_, info) in zip(times, entered)
        ]


def measure_latency_onnxruntime(
    onnx_path: str | os.PathLike,
    input_shape: tuple[int, ...],
    batch_size: int = 1,
    threads: int = 1,
    device: str | torch.device = "cpu",
    warmup: int = 10,
    repeats: int = 50,
    min_time_s: float = 1.0,
    seed: int = 0,
) -> dict[str, Any]:
    """Inference latency in ONNX Runtime on the same seeded inputs as PyTorch.

    Args:
        onnx_path: Model exported by :func:`capl.benchmark.export_onnx` (dynamic batch).
        input_shape: ``(C, H, W)`` of one image.
        batch_size: Images per run.
        threads: ``intra_op_num_threads`` (explicit on purpose).
        device: ``"cpu"`` or ``"cuda"``; CUDA falls back to CPU when ORT lacks the provider.
        warmup: Untimed runs first.
        repeats: Minimum timed runs.
        min_time_s: Minimum total timed seconds.
        seed: Input seed.

    Returns:
        ``{"median_ms", "p90_ms", "mean_ms", "std_ms", "min_ms", "repeats", "total_s",
        "batch_size", "device", "threads", "provider", "backend": "onnxruntime"}``.
    """
    _check_protocol(warmup, repeats, min_time_s)
    with ort_timer(onnx_path, input_shape, batch_size, threads, device, seed) as (step, info):
        times = _time_loop(step, warmup, repeats, min_time_s)
    return _summary(times) | info
