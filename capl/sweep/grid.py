"""The sweep YAML and its grid of points.

The file is read by :mod:`capl.sweep.config` into the types of :mod:`capl.sweep.spec`; this
module expands it into points (:func:`expand_grid`) with readable ids (:func:`make_point_id`).

A sweep file has these sections (only ``base``, ``data`` and ``grid`` are required)::

    name: demo                       # free text, shown in logs
    base:                            # the model every point prunes
      network: resnet20
      small_input: true
      num_classes: 10                # head rows of the base model
      checkpoint: null               # a state_dict / Lightning checkpoint path or a torchvision
                                     # weights name (IMAGENET1K_V1); null -> train it (below)
      trust_weights: false           # true: the checkpoint may be fully unpickled (can run
                                     # code; only for files from a trusted source)
      train:                         # used only without checkpoint; cached in OUTPUT/base/<hash>
        max_epochs: 5
        seed: 0
        optimizer: {class_path: torch.optim.SGD, init_args: {lr: 0.05, momentum: 0.9}}
        lr_scheduler: null
        data: {classes: null}        # DataModule init_args overrides (default: all classes)
        trainer: {}                  # further Trainer options
    data:                            # as ``data:`` in capl configs
      class_path: capl.datamodules.DigitsSubset
      init_args: {batch_size: 64, calibration_samples_per_class: 16}
    grid:
      criteria:                      # short names or class_path/init_args (+ optional name,
        - OCAP                       #   ratios, scopes, targets, seeds overriding the grid lists)
        - {class_path: LRP, init_args: {rules: auto}, ratios: [0.3, 0.5]}
      ratios: [0.3, 0.5, 0.7]
      scopes: [global]               # layer and/or global
      targets: [macs]                # null, macs, params and/or latency (pruning.latency:
                                     #   {backend, batch_size, threads, cache} says where)
      classes: [[3, 5, 8]]           # class subsets; default the data section's classes
      seeds: [0]
      retrain_epochs: [0, 1]         # 0 = prune and measure only
    pruning:                         # PruningCallback init_args (all but criterion, ratio,
      bn_recalibration: 10           #   scope, target: the grid's) -- the same schema
      round_to: auto
    retrain:                         # for points with retrain_epochs > 0
      optimizer: {class_path: torch.optim.SGD, init_args: {lr: 0.01, momentum: 0.9}}
      lr_scheduler: null
      early_stopping_patience: null
      trainer: {}                    # e.g. limit_train_batches
    benchmark:                       # BenchmarkCallback init_args (all but output, run_name)
      batch_sizes: [1, 32]
      input_size: null               # e.g. [3, 224, 224]: MACs and latency at that size
    trainer: {accelerator: cpu, devices: 1}   # Trainer options shared by every run

Every problem is reported as a one-line :class:`~capl.errors.ConfigError` naming the key.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from typing import Any

from capl.errors import ConfigError
from capl.sweep.config import apply_overrides, load_sweep_config, parse_sweep_config
from capl.sweep.spec import (
    BaseSpec,
    CriterionSpec,
    GridSpec,
    RetrainSpec,
    SweepConfig,
    TrainSpec,
    stable_hash,
)

__all__ = [
    "BaseSpec",
    "CriterionSpec",
    "GridSpec",
    "Point",
    "RetrainSpec",
    "Skipped",
    "SweepConfig",
    "TrainSpec",
    "apply_overrides",
    "expand_grid",
    "load_sweep_config",
    "make_point_id",
    "parse_sweep_config",
    "stable_hash",
]


@dataclass(frozen=True)
class Point:
    """One grid point: a criterion at a ratio, scope, target, class subset, seed and retraining."""

    index: int
    point_id: str
    criterion: CriterionSpec
    ratio: float
    scope: str
    target: str | None
    classes: Any
    seed: int
    retrain_epochs: int

    def criterion_init_args(self) -> dict[str, Any]:
        """The criterion's init_args; Random draws with the point's seed unless told otherwise."""
        args = dict(self.criterion.init_args)
        if self.criterion.class_name == "Random":
            args.setdefault("seed", self.seed)
        return args

    def settings(self, network: str | None = None) -> dict[str, Any]:
        """The point's settings in ``benchmark.json`` shape (rows of failed points use them).

        The criterion is under ``criterion`` (records of earlier releases said ``strategy``;
        :func:`capl.sweep.rows.flatten` reads both).
        """
        classes = self.classes if isinstance(self.classes, list) else [self.classes]
        out: dict[str, Any] = {
            "criterion": {"name": self.criterion.class_name, **self.criterion_init_args()},
            "ratio": self.ratio,
            "scope": self.scope,
            "target": self.target,
            "seed": self.seed,
            "retrain_epochs": self.retrain_epochs,
            "classes": {"indices": [c for c in classes if c is not None]},
        }
        if network is not None:
            out["model"] = network
        return out


@dataclass(frozen=True)
class Skipped:
    """A combination left out of the grid, and why."""

    point_id: str
    reason: str


def _ratio_label(ratio: float) -> str:
    text = f"{ratio:.4f}".rstrip("0")
    whole, _, frac = text.partition(".")
    return f"{whole}.{frac.ljust(2, '0')}"


def _classes_label(classes: Any) -> str:
    if classes is None:
        return "all"
    if isinstance(classes, str):
        text = classes
    else:
        text = "_".join(str(c) for c in classes)
    safe = "".join(ch if ch.isalnum() or ch in "_." else "_" for ch in text)
    if len(safe) > 32 or safe != text:  # long or lossy: keep it readable and unique
        head = safe[:16].rstrip("_")
        count = f"{len(classes)}x" if isinstance(classes, list) else ""
        safe = f"{head}_{count}{stable_hash(classes, 6)}"
    return safe


def make_point_id(
    label: str, scope: str, target: str | None, ratio: float, classes: Any, seed: int, epochs: int
) -> str:
    """The readable, deterministic id of a point, e.g. ``ocap-global-macs-r0.50-c3_5_8-s0-e0``."""
    return (
        f"{label}-{scope}-{target or 'none'}-r{_ratio_label(ratio)}-c{_classes_label(classes)}"
        f"-s{seed}-e{epochs}"
    )


def _data_free_deterministic(spec: CriterionSpec) -> bool:
    try:
        cls = spec.criterion_class()
    except (ImportError, AttributeError):
        return False
    return not getattr(cls, "requires_data", True) and spec.class_name != "Random"


def expand_grid(config: SweepConfig) -> tuple[list[Point], list[Skipped]]:
    """All runnable points in a fixed order (their ``index``), and the combinations left out.

    Left out, with the reason recorded:

    * ratio 0 prunes nothing, so every criterion, scope and target gives the same network: one
      point per class subset, seed and retraining length is kept (the first criterion's).
    * a data-free deterministic criterion (Magnitude, L1Norm, BNScale, ...) without retraining
      does not depend on the seed: only the first seed is run.

    Magnitude-type (weight / kernel granularity) criteria run with both scopes and all targets.
    """
    grid = config.grid
    points: list[Point] = []
    skipped: list[Skipped] = []
    seen_zero: dict[tuple, str] = {}
    for spec in grid.criteria:
        data_free = _data_free_deterministic(spec)
        combos = itertools.product(
            grid.classes,
            spec.seeds or grid.seeds,
            grid.retrain_epochs,
            spec.scopes or grid.scopes,
            spec.targets or grid.targets,
            spec.ratios or grid.ratios,
        )
        for classes, seed, epochs, scope, target, ratio in combos:
            pid = make_point_id(spec.label, scope, target, ratio, classes, seed, epochs)
            if data_free and epochs == 0 and seed != grid.seeds[0]:
                skipped.append(
                    Skipped(
                        pid,
                        f"{spec.class_name} is data-free and deterministic: without retraining "
                        f"the seed changes nothing (seed {grid.seeds[0]} is run)",
                    )
                )
                continue
            if ratio == 0.0:
                key = (json.dumps(classes), seed, epochs)
                if key in seen_zero:
                    reason = f"ratio 0 prunes nothing: same as {seen_zero[key]}"
                    skipped.append(Skipped(pid, reason))
                    continue
                seen_zero[key] = pid
            points.append(
                Point(
                    index=len(points),
                    point_id=pid,
                    criterion=spec,
                    ratio=ratio,
                    scope=scope,
                    target=target,
                    classes=classes,
                    seed=seed,
                    retrain_epochs=epochs,
                )
            )
    ids = [p.point_id for p in points]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ConfigError(f"grid gives point {dup} twice: remove the repeated list entry")
    return points, skipped
