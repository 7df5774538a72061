"""The typed form of a sweep YAML: one dataclass per section, and the grid's choices.

:mod:`capl.sweep.config` builds these from a parsed file (validating every key);
:mod:`capl.sweep.grid` expands a :class:`SweepConfig` into its points. The scopes and targets a
grid may list are the ``PruningConfig`` ones (:data:`capl.pruning.config.Scope` /
:data:`~capl.pruning.config.Target`), defined there once.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, get_args

from capl.pruning.config import Scope, Target

__all__ = [
    "SCOPES",
    "TARGETS",
    "BaseSpec",
    "CriterionSpec",
    "GridSpec",
    "RetrainSpec",
    "SweepConfig",
    "TrainSpec",
    "stable_hash",
]

#: The scopes a grid may list (``PruningConfig.scope``).
SCOPES: tuple[str, ...] = get_args(Scope)
#: The targets a grid may list: none (a ratio of filters) or a ``PruningConfig.target``.
TARGETS: tuple[str | None, ...] = (None, *get_args(Target))


def stable_hash(obj: Any, length: int = 12) -> str:
    """Hex digest of ``obj``'s canonical JSON (sorted keys): equal settings, equal hash."""
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


@dataclass
class TrainSpec:
    """How the sweep trains the base model when no checkpoint is given."""

    max_epochs: int = 10
    seed: int = 0
    optimizer: dict[str, Any] | None = None
    lr_scheduler: dict[str, Any] | None = None
    data: dict[str, Any] = field(default_factory=lambda: {"classes": None})
    trainer: dict[str, Any] = field(default_factory=dict)


@dataclass
class BaseSpec:
    """The base model every grid point starts from."""

    network: str
    small_input: bool = False
    num_classes: int | None = None
    checkpoint: str | None = None
    train: TrainSpec | None = None
    trust_weights: bool = False


@dataclass
class CriterionSpec:
    """One criterion of the grid, with optional per-criterion grid overrides."""

    class_path: str
    init_args: dict[str, Any]
    label: str
    ratios: list[float] | None = None
    scopes: list[str] | None = None
    targets: list[str | None] | None = None
    seeds: list[int] | None = None

    @property
    def class_name(self) -> str:
        """The criterion's class name (``OCAP``)."""
        return self.class_path.rsplit(".", 1)[-1]

    def criterion_class(self) -> type:
        """Import the criterion class."""
        module, _, name = self.class_path.rpartition(".")
        return getattr(importlib.import_module(module), name)


@dataclass
class GridSpec:
    """The lists whose product is the sweep."""

    criteria: list[CriterionSpec]
    ratios: list[float]
    scopes: list[str] = field(default_factory=lambda: ["global"])
    targets: list[str | None] = field(default_factory=lambda: [None])
    classes: list[Any] = field(default_factory=lambda: [None])
    seeds: list[int] = field(default_factory=lambda: [0])
    retrain_epochs: list[int] = field(default_factory=lambda: [0])


@dataclass
class RetrainSpec:
    """Retraining options for points with ``retrain_epochs > 0``."""

    optimizer: dict[str, Any] | None = None
    lr_scheduler: dict[str, Any] | None = None
    early_stopping_patience: int | None = None
    trainer: dict[str, Any] = field(default_factory=dict)


@dataclass
class SweepConfig:
    """A whole sweep file, validated."""

    base: BaseSpec
    data: dict[str, Any]
    grid: GridSpec
    name: str = "sweep"
    # the PruningCallback / BenchmarkCallback init_args every point shares (capl.sweep.options)
    pruning: dict[str, Any] = field(default_factory=dict)
    retrain: RetrainSpec = field(default_factory=RetrainSpec)
    benchmark: dict[str, Any] = field(default_factory=dict)
    trainer: dict[str, Any] = field(default_factory=dict)

    def fingerprint(self) -> str:
        """Hash of everything but the grid: points of one output folder must share it."""
        settings = asdict(self)
        for key in ("grid", "name"):
            settings.pop(key)
        settings["base"].pop("trust_weights")  # how a file is read, not what is run
        return stable_hash(settings)
