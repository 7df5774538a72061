"""Several pruned models timed in one interleaved run against their common base model.

A run of ``capl test`` times its pruned model and the base in alternating rounds
(:func:`capl.benchmark.paired_latency`). A sweep with many pruned models of one base would pay
the base's timing once per point; instead each point leaves a :class:`LatencyJob` and
:func:`time_jobs` times the base and all the jobs' models in one run of
:func:`capl.benchmark.measure_interleaved` (every round times each model in turn, order reversed
every other round), so every speed-up is still a ratio of medians measured side by side under
the same machine load, and the base is timed once per group instead of once per point.
Jobs whose models have the same architecture (:func:`architecture_key`: module tree, layer
settings, tensor shapes and dtypes) are measured once: latency, the ONNX export and peak
memory depend on the shapes, not on the weights (:func:`capl.benchmark.shape_profile`), and
several ratios or criteria often end in the same widths (channel rounding, layer scope).
Their cells carry ``same_architecture_as``, the name of the job actually measured.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from capl.benchmark.onnx_export import Exporter
from capl.benchmark.profile import BACKENDS, paired_latency, shape_profile

__all__ = ["LatencyJob", "architecture_key", "group_latency", "time_jobs"]

log = logging.getLogger(__name__)

Latency = dict[str, dict[str, Any]]
"""A model's ``latency_ms`` block: ``{backend: {"bs<N>": summary}}``."""

Shapes = dict[str, Any]
"""A model's :func:`~capl.benchmark.shape_profile` block: ONNX export, peak memory, errors."""


@dataclass
class LatencyJob:
    """A benchmarked model whose latency is still to be timed against its base model.

    Attributes:
        key: Jobs with equal keys share the base model and every timing setting.
        base: The base network (only the first job of a group needs it).
        base_onnx: The base model's ONNX file, or ``None`` (no ONNX Runtime timing).
        model: The model under test; exported to ONNX by the group run.
        timing: :func:`paired_latency` options (``input_shape``, ``batch_sizes``, ``backends``,
            ``device``, ``ort_threads``, ``warmup``, ``repeats``, ``min_time_s``, ``rounds``).
        finish: Called once measured with the base's ``latency_ms`` block, the model's, and
            the model's :func:`~capl.benchmark.shape_profile` block (its ONNX file is gone).
        name: For log lines.
        exporter: ONNX exporter of the model (:func:`capl.benchmark.export_onnx`).
    """

    key: str
    base: nn.Module | None
    base_onnx: str | os.PathLike | None
    model: nn.Module
    timing: dict[str, Any]
    finish: Callable[[Latency, Latency, Shapes], Any]
    name: str = "model"
    exporter: Exporter = "auto"


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
    backends = list(options.pop("backends", BACKENDS))
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
    """For each job, the index of the first job with the same architecture."""
    first: dict[str, int] = {}
    return [first.setdefault(architecture_key(job.model), i) for i, job in enumerate(jobs)]


def _same_as(latency: Latency, shapes: Shapes, name: str) -> tuple[Latency, Shapes]:
    """Copies of another job's cells and shape block, each entry saying whose model it was."""
    cells, shapes = copy.deepcopy(latency), copy.deepcopy(shapes)
    for by_batch in cells.values():
        for cell in by_batch.values():
            cell["same_architecture_as"] = name
    for entry in [shapes["onnx"] or {}, *shapes["peak_memory"].values()]:
        if entry:
            entry["same_architecture_as"] = name
    return cells, shapes


def _shape_blocks(
    jobs: Sequence[LatencyJob], indices: Sequence[int], input_shape: tuple[int, ...], folder: str
) -> dict[int, Shapes]:
    """Each listed job's shape block, its model exported to ``folder`` when ONNX Runtime runs."""
    timing = jobs[0].timing
    backends = list(timing.get("backends", BACKENDS))
    if jobs[0].base_onnx is None:  # no base file: nothing to compare an ONNX Runtime time with
        backends = [b for b in backends if b != "onnxruntime"]
    return {
        i: shape_profile(
            jobs[i].model,
            input_shape,
            batch_sizes=timing["batch_sizes"],
            backends=backends,
            device=timing.get("device", "cpu"),
            workdir=folder,
            name=f"model{i}",
            exporter=jobs[i].exporter,
        )
        for i in indices
    }


def time_jobs(jobs: Sequence[LatencyJob]) -> None:
    """Measure the jobs' models against their base in one interleaved run; finish each job.

    Models of the same architecture are measured once (the first of them: ONNX export, peak
    memory, latency); the others get copies marked ``same_architecture_as``.

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
    with tempfile.TemporaryDirectory(prefix="capl-group-") as folder:
        shapes = _shape_blocks(jobs, distinct, input_shape, folder)
        latencies = group_latency(
            [first.base, *(jobs[i].model for i in distinct)],
            [first.base_onnx, *((shapes[i]["onnx"] or {}).get("path") for i in distinct)],
            input_shape,
            **timing,
        )
    for block in shapes.values():
        if block["onnx"]:
            block["onnx"]["path"] = None  # the group's temporary file
    measured = dict(zip(distinct, latencies[1:]))
    for i, job in enumerate(jobs):
        rep = timed_as[i]
        if rep == i:
            job.finish(latencies[0], measured[i], shapes[i])
        else:
            job.finish(latencies[0], *_same_as(measured[rep], shapes[rep], jobs[rep].name))
