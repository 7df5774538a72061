"""The plan format: :class:`PruningPlan`, its JSON form, its fingerprint and its packed masks.

A :class:`PruningPlan` is plain data: which output channels of which groups to remove (structured
granularity) or which weights / kernels to zero (mask granularities), plus what it was made from
and what it realised. Plans are JSON files, so a pruned network can be rebuilt from its
architecture, its plan and its weights.
"""

from __future__ import annotations

import base64
import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from capl.errors import ConfigError
from capl.pruning.config import PruningConfig

PLAN_VERSION = 1


@dataclass
class PruningPlan:
    """A replayable pruning decision.

    Attributes:
        network: Architecture name (as given to :func:`~capl.pruning.plan.make_plan`).
        fingerprint: Hash of the unpruned network's state_dict names and shapes; a plan only
            applies to a network with the same fingerprint.
        input_shape: Per-sample input shape ``[C, H, W]`` used to trace the network.
        granularity: ``"filter"`` (structured), ``"kernel"`` or ``"weight"`` (masks).
        criterion: The criterion's :meth:`~capl.criteria.base.Criterion.settings`.
        config: The :class:`PruningConfig` used.
        removed: Structured: ``[key conv name, removed output-channel indices]`` per group, in
            application order; the indices number the key conv's channels as they are when that
            group is applied (groups never share output channels, so these are the original ones).
        masks: Masks: per layer ``{"shape": unit shape, "keep": base64 of the bit-packed keep
            mask}``; the unit shape is the weight's shape (weight) or its first two dims (kernel).
        head_rows: Classifier rows kept after pruning (class-subset head), or ``None``.
        report: Realised counts from :func:`~capl.pruning.report.pruning_report` plus
            ``selection`` (the ratio the search settled on and the requested budget).
        version: Plan format version.
    """

    network: str
    fingerprint: str
    input_shape: list[int]
    granularity: str
    criterion: dict[str, Any]
    config: PruningConfig
    removed: list[tuple[str, list[int]]] = field(default_factory=list)
    masks: dict[str, dict[str, Any]] = field(default_factory=dict)
    head_rows: list[int] | None = None
    report: dict[str, Any] = field(default_factory=dict)
    version: int = PLAN_VERSION

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (``json.dumps`` works on it)."""
        return {
            "version": self.version,
            "network": self.network,
            "fingerprint": self.fingerprint,
            "input_shape": list(self.input_shape),
            "granularity": self.granularity,
            "criterion": _jsonable(self.criterion),
            "config": self.config.to_dict(),
            "removed": [[key, list(idxs)] for key, idxs in self.removed],
            "masks": {k: dict(v) for k, v in self.masks.items()},
            "head_rows": None if self.head_rows is None else list(self.head_rows),
            "report": _jsonable(self.report),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PruningPlan:
        """Rebuild from :meth:`to_dict` output (e.g. after a JSON round trip)."""
        version = data.get("version")
        if version != PLAN_VERSION:
            raise ConfigError(
                f"pruning plan version {version!r} is not supported: re-create the plan with "
                f"this capl (plan version {PLAN_VERSION})"
            )
        try:
            return cls(
                network=data["network"],
                fingerprint=data["fingerprint"],
                input_shape=list(data["input_shape"]),
                granularity=data["granularity"],
                criterion=dict(data["criterion"]),
                config=PruningConfig.from_dict(data["config"]),
                removed=[(str(k), [int(i) for i in v]) for k, v in data.get("removed", [])],
                masks={k: dict(v) for k, v in data.get("masks", {}).items()},
                head_rows=None if data.get("head_rows") is None else list(data["head_rows"]),
                report=dict(data.get("report", {})),
            )
        except KeyError as err:
            raise ConfigError(
                f"pruning plan lacks the field {err.args[0]!r}: pass a file written by "
                "PruningPlan.to_dict"
            ) from None


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Tensor):
        return value.tolist()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def fingerprint(model: nn.Module) -> str:
    """Short hash of a network's state_dict names and shapes (its architecture)."""
    text = ";".join(f"{k}:{tuple(v.shape)}" for k, v in model.state_dict().items())
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def pack_mask(keep: Tensor) -> str:
    """Base64 text of a bool keep mask, bit-packed (the plan's ``masks[...]["keep"]``)."""
    return base64.b64encode(np.packbits(keep.numpy()).tobytes()).decode("ascii")


def _unpack(text: str, shape: Sequence[int]) -> Tensor:
    count = math.prod(shape)
    bits = np.unpackbits(np.frombuffer(base64.b64decode(text), dtype=np.uint8), count=count)
    return torch.from_numpy(bits.astype(bool)).reshape(tuple(shape))


def plan_mask(plan: PruningPlan, layer: str) -> Tensor:
    """The keep mask (bool, unit shape) a mask plan stores for ``layer``."""
    entry = plan.masks[layer]
    return _unpack(entry["keep"], entry["shape"])
