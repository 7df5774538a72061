"""Several pruned models timed in one interleaved run against their common base model.

A run of ``capl test`` times its pruned model and the base in alternating rounds
(:func:`capl.benchmark.paired_latency`). A sweep with many pruned models of one base would pay
the base's timing once per point; instead each point leaves a :class:`LatencyJob` and
:func:`time_jobs` times the base and all the jobs' models in one run of
:func:`capl.benchmark.measure_interleaved` (every round times each model in turn, order reversed
every other round), so every speed-up is still a ratio of medians measured side by side under
the same machine load, and the base is timed once per group instead of once per point.
Jobs whose models have the same architecture (:func:`architecture_key`: module tree, layer
settings, tensor shapes and dtypes) are timed once: latency depends on the shapes, not on the
weights, and several ratios or criteria often end in the same widths (channel rounding,
layer scope). Their cells carry ``same_architecture_as``, the name of the job actually timed.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from capl.benchmark.profile import paired_latency

__all__ = ["LatencyJob", "architecture_key", "group_latency", "time_jobs"]

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


def architecture_key(model: nn.Module) -> str:
    """A hash of what a model's latency depends on, its weights' values aside.

    Covers each module's class, settings (its ``extra_repr``: channels, kernel, stride, padding,
    groups, ...) and hook counts, and each parameter's and buffer's name, shape and dtype. Two
    models with equal keys run the same operations on tensors of the same shapes.
    """
    digest = hashlib.sha256()
    for name, module in model.named_modules():
        hooks = len(module._forward_hooks) + len(module._forward_pre_hooks)
        kind = f"{type(module).__module__}.{type(module).__qualname__}"
        digest.update(f"{name}|{kind}|{module.extra_repr()}|{hooks}\n".encode())
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}\n".encode())
    return digest.hexdigest()


def _timed_once(jobs: Sequence[LatencyJob]) -> list[int]:
    """For each job, the index of the first job with the same architecture and ONNX presence."""
    first: dict[tuple[str, bool], int] = {}
    return [
        first.setdefault((architecture_key(job.model), job.onnx is None), i)
        for i, job in enumerate(jobs)
    ]


def _same_as(latency: Latency, name: str) -> Latency:
    """A copy of another job's cells, each saying whose model was timed."""
    cells = copy.deepcopy(latency)
    for by_batch in cells.values():
        for cell in by_batch.values():
            cell["same_architecture_as"] = name
    return cells


def time_jobs(jobs: Sequence[LatencyJob]) -> None:
    """Time the jobs' models and their base in one interleaved run; hand each job its cells.

    Models of the same architecture are timed once (the first of them); the others get copies
    of its cells marked ``same_architecture_as``.

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
    timed_as = _timed_once(jobs)
    distinct = sorted(set(timed_as))
    log.info(
        "timing %d pruned model(s) (%d distinct architectures) against their base in one "
        "interleaved run: %s",
        len(jobs),
        len(distinct),
        ", ".join(job.name for job in jobs),
    )
    latencies = group_latency(
        [first.base, *(jobs[i].model for i in distinct)],
        [first.base_onnx, *(jobs[i].onnx for i in distinct)],
        input_shape,
        **timing,
    )
    measured = dict(zip(distinct, latencies[1:]))
    for i, job in enumerate(jobs):
        rep = timed_as[i]
        latency = measured[rep] if rep == i else _same_as(measured[rep], jobs[rep].name)
        job.finish(latencies[0], latency)
