"""The base model's benchmark block, measured once and shared by every run with the same base.

A sweep benchmarks many pruned models against one base model. Its block of ``benchmark.json``
(accuracy on the k-way test task, MACs, parameters, sizes, peak memory, the ONNX export) is the
same for all of them, so :class:`BaseCache` keeps it in a folder, keyed by
:func:`base_fingerprint`: the base network's weights (a hash of the state dict's bytes), its
head classes, the data settings that decide the test split, the benchmark settings and the
library versions. Latency is not cached: it is only meaningful next to the model it is
compared with (see :mod:`capl.benchmark.group`).

Entries are ``<folder>/<key>/before.json`` (data only, read with :mod:`json`; never pickle) and
``before.onnx``; both are written atomically, the JSON last, so an entry with a JSON file is
complete. A file lock per key lets parallel processes (SLURM array tasks) wait for the first
one instead of measuring the same base twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from capl.io import write_json_atomic

__all__ = [
    "BASE_BLOCK_FILE",
    "BASE_ONNX_FILE",
    "BaseCache",
    "base_fingerprint",
    "hash_tensor",
    "weights_hash",
]

log = logging.getLogger(__name__)

BASE_BLOCK_FILE = "before.json"
BASE_ONNX_FILE = "before.onnx"
_VERSION = 1  # bump when the cached block's content changes meaning


def weights_hash(network: nn.Module) -> str:
    """SHA-256 of a network's state dict (names, dtypes, shapes and bytes of every tensor)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(network.state_dict().items()):
        hash_tensor(digest, name, tensor)
    return digest.hexdigest()


def hash_tensor(digest: Any, label: str, tensor: torch.Tensor) -> int:
    """Feed ``label``, ``tensor``'s dtype, shape and bytes to ``digest``; return the byte count."""
    data = tensor.detach().cpu().contiguous().reshape(-1)
    digest.update(f"{label}|{data.dtype}|{tuple(tensor.shape)}|".encode())
    digest.update(data.view(torch.uint8).numpy())  # the buffer itself: no copy
    return data.numel() * data.element_size()


def base_fingerprint(network: nn.Module, settings: Mapping[str, Any]) -> str:
    """The cache key of a base model's block: its weights plus everything the block depends on.

    Args:
        network: The base network (its state dict is hashed).
        settings: JSON-serialisable settings the block depends on (head classes, data
            settings, input shape, benchmark options); library versions are added here.

    Returns:
        24 hex digits.
    """
    import onnxruntime

    import capl

    payload = {
        "version": _VERSION,
        "weights": weights_hash(network),
        "network": type(network).__qualname__,
        "settings": dict(settings),
        "libraries": [capl.__version__, torch.__version__, onnxruntime.__version__],
    }
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class BaseCache:
    """A folder of base-model blocks, one sub-folder per :func:`base_fingerprint`.

    Args:
        folder: The cache folder (created on first store).
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)

    def entry(self, key: str) -> Path:
        """The folder of one entry."""
        return self.folder / key

    def onnx_path(self, key: str) -> Path:
        """Where an entry keeps the base model's ONNX export."""
        return self.entry(key) / BASE_ONNX_FILE

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Hold the entry's file lock (other processes wait for the one measuring it)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / f"{key}.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def load(self, key: str) -> dict[str, Any] | None:
        """The cached block, or ``None`` when missing, unreadable or incomplete.

        An entry whose block names an ONNX export but lacks the file is incomplete.
        """
        path = self.entry(key) / BASE_BLOCK_FILE
        try:
            stored = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        if not isinstance(stored, dict) or stored.get("key") != key:
            log.warning("ignoring base cache entry %s: not written for this key", path)
            return None
        block = stored.get("block")
        if not isinstance(block, dict) or "accuracy" not in block:
            log.warning("ignoring base cache entry %s: no benchmark block", path)
            return None
        if block.get("onnx") and not self.onnx_path(key).is_file():
            return None
        return block

    def store(self, key: str, block: Mapping[str, Any]) -> Path:
        """Keep ``block`` under ``key`` (its ONNX export is already at :meth:`onnx_path`).

        Returns:
            The entry's JSON file.
        """
        return write_json_atomic(
            self.entry(key) / BASE_BLOCK_FILE, {"key": key, "block": dict(block)}
        )
