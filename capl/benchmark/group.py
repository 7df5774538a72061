"""Several pruned models timed in one interleaved run against their common base model.

A run of ``capl test`` times its pruned model and the base in alternating rounds
(:func:`capl.benchmark.paired_latency`). A sweep with many pruned models of one base would pay
the base's timing once per point; instead each point leaves a :class:`LatencyJob` and
:func:`time_jobs` times the base and all the jobs' models in one run of
:func:`capl.benchmark.measure_interleaved` (every round times each model in turn, order reversed
every other round), so every speed-up is still a ratio of medians measured side by side under
the same machine load, and the base is timed once per group instead of once per point.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from capl.benchmark.profile import paired_latency

__all__ = ["LatencyJob", "group_latency", "time_jobs"]

log = logging.getLogger(__name__)

Latency = dict[str, dict[str, Any]]
"""A model's ``latency_ms`` block: ``{backend: {"bs<N>": summary}}``."""


@dataclass
class LatencyJob:
    """A benchmarked model whose latency is still to be timed against its base model.

    Attributes:
        key: Jobs with equal keys share the base model and every timing setting.
        base: The base network (only the first job of a group needs it).
        base_onnx: The base model's ONNX file, or ``None`` (no ONNX Runtime timing).
        model: The model under test.
        onnx: Its ONNX file, or ``None`` (its ONNX Runtime cells stay empty).
        timing: :func:`paired_latency` options (``input_shape``, ``batch_sizes``, ``backends``,
            ``device``, ``ort_threads``, ``warmup``, ``repeats``, ``min_time_s``, ``rounds``).
        finish: Called with the base's and the model's ``latency_ms`` blocks once timed.
        name: For log lines.
    """

    key: str
    base: nn.Module | None
    base_onnx: str | os.PathLike | None
    model: nn.Module
    onnx: str | os.PathLike | None
    timing: dict[str, Any]
    finish: Callable[[Latency, Latency], Any]
    name: str = "model"


def group_latency(
    models: Sequence[nn.Module],
    onnx_paths: Sequence[str | os.PathLike | None],
    input_shape: tuple[int, ...],
    **options: Any,
) -> list[Latency]:
    """:func:`paired_latency` of a reference model (first) and the others, missing ONNX aside.

    PyTorch times every model together. ONNX Runtime times the reference with the models that
    have an ONNX file (a model whose export failed only loses its own cells); without the
    reference's file no model gets ONNX Runtime cells.

    Returns:
        Per model its ``latency_ms`` block, in the order given.
    """
    backends = list(options.pop("backends", ("torch", "onnxruntime")))
    out: list[Latency] = [{} for _ in models]
    if "torch" in backends:
        timed = paired_latency(
            list(models), [None] * len(models), input_shape, backends=["torch"], **options
        )
        for block, latency in zip(out, timed):
            block.update(latency)
    with_onnx = [i for i, path in enumerate(onnx_paths) if path is not None]
    if "onnxruntime" in backends and with_onnx[:1] == [0] and len(with_onnx) > 1:
        timed = paired_latency(
            [models[i] for i in with_onnx],
            [onnx_paths[i] for i in with_onnx],
            input_shape,
            backends=["onnxruntime"],
            **options,
        )
        for i, latency in zip(with_onnx, timed):
            out[i].update(latency)
    return out


def time_jobs(jobs: Sequence[LatencyJob]) -> None:
    """Time the jobs' models and their base in one interleaved run; hand each job its cells.

    Raises:
        ValueError: The jobs do not share one key, or the first has no base model.
    """
    if not jobs:
        return
    if len({job.key for job in jobs}) != 1:
        raise ValueError("time_jobs needs jobs of one base and one timing setting (one key)")
    first = jobs[0]
    if first.base is None:
        raise ValueError("the first job of a group must carry the base model")
    timing = dict(first.timing)
    input_shape = tuple(timing.pop("input_shape"))
    log.info(
        "timing %d pruned model(s) against their base in one interleaved run: %s",
        len(jobs),
        ", ".join(job.name for job in jobs),
    )
    latencies = group_latency(
        [first.base, *(job.model for job in jobs)],
        [first.base_onnx, *(job.onnx for job in jobs)],
        input_shape,
        **timing,
    )
    for job, latency in zip(jobs, latencies[1:]):
        job.finish(latencies[0], latency)
