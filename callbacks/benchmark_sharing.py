"""The parts of BenchmarkCallback that let many runs share one base model's work.

``base_cache``: the base model's block (all but latency) is measured by the first run with a
given key and read by the others (:class:`capl.benchmark.base_cache.BaseCache`).
``latency: deferred``: the run leaves a :class:`capl.benchmark.group.LatencyJob`, and
:func:`complete` later puts the group run's measurements (the interleaved timing, and the
model's ONNX export and peak memory, measured once per architecture) into its
``benchmark.json``.
"""

from __future__ import annotations

import copy
import inspect
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from capl.benchmark import format_table
from capl.benchmark.base_cache import BaseCache, base_fingerprint
from capl.benchmark.group import Latency, Shapes
from capl.benchmark.record import realised
from capl.benchmark.tensorboard import log_benchmark
from capl.io import write_json_atomic
from capl.pruning.latency_table import latency_prediction

__all__ = ["ONNX_FILE_KEY", "base_key", "cached_base_block", "complete", "data_settings"]

log = logging.getLogger(__name__)

ONNX_FILE_KEY = "_onnx_file"
"""A block's transient entry naming its ONNX file (removed before the record is written)."""


def data_settings(datamodule: Any) -> dict[str, Any]:
    """What decides a DataModule's test split: its type, classes and ``__init__`` settings."""
    params = inspect.signature(type(datamodule).__init__).parameters
    settings = {
        name: getattr(datamodule, name)
        for name in params
        if name != "self" and isinstance(getattr(datamodule, name, None), str | int | float | bool)
    }
    return {
        "type": f"{type(datamodule).__module__}.{type(datamodule).__qualname__}",
        "name": getattr(datamodule, "name", None),
        "class_indices": list(datamodule.class_indices),
        "class_names": list(datamodule.class_names),
        "input_shape": list(datamodule.input_shape),
        **settings,
    }


def base_key(
    base: tuple[nn.Module, list[int]],
    datamodule: Any,
    input_shape: tuple[int, ...],
    options: Mapping[str, Any],
) -> str:
    """The base block's cache key, also the group key of a deferred latency.

    Args:
        base: The base network and its head classes.
        datamodule: The run's DataModule (its test split settings).
        input_shape: The benchmark's ``(C, H, W)``.
        options: The benchmark options the block or its timing depend on.
    """
    net, head = base
    settings = {
        "head_classes": list(head),
        "data": data_settings(datamodule),
        "input_shape": list(input_shape),
        "torch_threads": torch.get_num_threads(),
        **options,
    }
    return base_fingerprint(net, settings)


def cached_base_block(
    folder: str, key: str, measure: Callable[[Path], dict[str, Any]]
) -> dict[str, Any]:
    """The base model's block from the cache ``folder``, measured and stored on a miss.

    Args:
        folder: The cache folder.
        key: :func:`base_key`.
        measure: Measures the block, exporting ONNX into the folder it is given.

    Returns:
        A copy of the block, with ``base_cache`` (the key) and :data:`ONNX_FILE_KEY`.
    """
    cache = BaseCache(folder)
    with cache.lock(key):  # parallel processes wait for the one measuring
        block = cache.load(key)
        if block is None:
            block = measure(cache.entry(key))
            block.pop(ONNX_FILE_KEY, None)
            block.pop("latency_ms", None)  # timed next to the model it is compared with
            if block.get("onnx"):
                block["onnx"]["path"] = None  # the entry knows its file; a moved cache still works
            block["base_cache"] = key
            cache.store(key, block)
            log.info("base model measured once and cached in %s", cache.entry(key))
        else:
            log.info("base model's benchmark block read from %s", cache.entry(key))
    block = {**copy.deepcopy(block), "latency_ms": {}}
    block[ONNX_FILE_KEY] = str(cache.onnx_path(key)) if block.get("onnx") else None
    return block


def complete(
    record: dict[str, Any],
    output: Path,
    plan: dict[str, Any] | None,
    loggers: list[Any],
    files: list[Path],
    before_latency: Latency,
    after_latency: Latency,
    after_shapes: Shapes,
) -> dict[str, Any]:
    """Put a deferred run's group measurements into its record, rewrite benchmark.json, log it.

    Args:
        record: The run's record (latency blocks empty, the model's ONNX and memory not yet
            measured).
        output: Its ``benchmark.json``.
        plan: The pruning plan (a latency-table prediction is compared with the measurement).
        loggers: The run's Lightning loggers.
        files: The run's own ONNX files, removed once timed.
        before_latency: The base model's ``latency_ms`` from the group run.
        after_latency: The model's ``latency_ms`` from the same run.
        after_shapes: The model's ONNX export and peak memory
            (:func:`capl.benchmark.shape_profile`), measured by the group run.

    Returns:
        The completed record.
    """
    after = record["after"]
    after.update({key: value for key, value in after_shapes.items() if key != "errors"})
    after["errors"] = {**(after.get("errors") or {}), **after_shapes.get("errors", {})}
    record["before"]["latency_ms"] = before_latency
    after["latency_ms"] = after_latency
    record["realised"] = realised(record["before"], record["after"])
    record["latency_prediction"] = latency_prediction(plan, record["before"], record["after"])
    path = write_json_atomic(output, record)
    for logger in loggers:
        log_benchmark(logger, record)
        logger.finalize("success")  # the run's end closed its writer; flush the new events
    for file in files:
        file.unlink(missing_ok=True)
    rank_zero_info(f"capl benchmark ({path}):\n{format_table(record['before'], record['after'])}")
    return record
