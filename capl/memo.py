"""Evaluation and BatchNorm recalibration computed once per process for identical inputs.

A sweep runs its points in one process, and many of them prune to the same network: layer
scope gives every criterion the same widths at a ratio, and rounded widths (``round_to``) map
neighbouring ratios to one architecture, often with the same surviving filters. Such points
would recalibrate the same weights on the same batches and evaluate the result on the same test
split again. Here the key is a digest of the inputs themselves (the network's modules, hooks
and weights, the batch tensors as loaded, the device and the thread count), not of the settings
meant to produce them: a hit returns what the computation would return, and a change anywhere
(data, transforms, seed, weights) is a miss. The loaders are iterated exactly as before, so the
random number generators advance the same way with or without a hit.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from capl.benchmark.base_cache import hash_tensor, weights_hash
from capl.benchmark.group import architecture_key
from capl.evaluation import evaluate_subset
from capl.models import model_device
from capl.pruning.recalibrate import batchnorm_layers, recalibrate_batchnorm

__all__ = ["MEMO", "Memo", "evaluate_once", "recalibrate_once"]

# batches held in memory to hash them before the forward passes; a larger split streams unkeyed
MAX_BATCH_BYTES = 256 * 2**20


class Memo:
    """A bounded record of results by key, oldest dropped first; results are copied out.

    Args:
        size: Most results kept.
    """

    def __init__(self, size: int = 32) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.size = size
        self.hits = 0
        self._entries: OrderedDict[tuple[Any, ...], Any] = OrderedDict()

    def get(self, key: tuple[Any, ...]) -> Any | None:
        """A copy of the result kept under ``key``, or ``None``."""
        if key not in self._entries:
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return copy.deepcopy(self._entries[key])

    def put(self, key: tuple[Any, ...], value: Any) -> None:
        """Keep a copy of ``value`` under ``key``."""
        self._entries[key] = copy.deepcopy(value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        """Forget every result."""
        self._entries.clear()
        self.hits = 0


MEMO = Memo()


def _network_key(network: nn.Module) -> tuple[str, ...]:
    """What decides a network's outputs: its modules (classes, settings, hooks), its weights."""
    device = model_device(network).type
    threads = str(torch.get_num_threads())
    return (architecture_key(network), weights_hash(network), device, threads)


def _collect(batches: Iterable[Any], limit: int | None = None) -> tuple[Iterable[Any], str | None]:
    """The batches as a consumer taking ``limit`` of them would fetch them, and their digest.

    The digest is ``None`` (and the rest streams) when the batches exceed ``MAX_BATCH_BYTES``.
    """
    digest, held, size = hashlib.sha256(), [], 0
    iterator: Iterator[Any] = iter(batches)
    for batch in iterator:
        if limit is not None and len(held) >= limit:
            break  # like recalibrate_batchnorm: it fetches one batch more, then stops
        held.append(batch)
        size += sum(hash_tensor(digest, "", torch.as_tensor(tensor)) for tensor in batch)
        if size > MAX_BATCH_BYTES:
            return itertools.chain(held, iterator), None
    return held, digest.hexdigest()


def evaluate_once(
    network: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    rows: Sequence[int],
    class_names: Sequence[str],
    memo: Memo = MEMO,
) -> dict[str, Any]:
    """:func:`capl.evaluation.evaluate_subset`, taken from ``memo`` for identical inputs."""
    held, data = _collect(batches)
    if data is None:
        return evaluate_subset(network, held, rows, class_names)
    key = ("evaluate", *_network_key(network), data, tuple(rows), tuple(class_names))
    result = memo.get(key)
    if result is None:
        result = evaluate_subset(network, held, rows, class_names)
        memo.put(key, result)
    return result


def recalibrate_once(
    network: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    num_batches: int,
    memo: Memo = MEMO,
) -> int:
    """:func:`capl.pruning.recalibrate_batchnorm`, the statistics from ``memo`` if inputs match.

    Returns:
        The number of batches used.
    """
    norms = batchnorm_layers(network)
    if not norms or num_batches <= 0:
        return 0
    held, data = _collect(batches, num_batches)
    if data is None:
        return recalibrate_batchnorm(network, held, num_batches)
    key = ("recalibrate", *_network_key(network), data, num_batches)
    known = memo.get(key)
    if known is not None:
        for norm, buffers in zip(norms, known["buffers"]):
            for name, value in buffers.items():
                getattr(norm, name).copy_(value)
        return int(known["used"])
    used = recalibrate_batchnorm(network, held, num_batches)
    buffers = [dict(norm.named_buffers()) for norm in norms]
    memo.put(key, {"used": used, "buffers": buffers})  # put keeps a copy
    return used
