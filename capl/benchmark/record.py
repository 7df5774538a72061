"""benchmark.json: the record of one benchmarked run, its sections, and where its values live.

The record is what :class:`capl.callbacks.BenchmarkCallback` writes and what a sweep flattens
into one row of ``results.csv`` (schema in ``docs/ARCHITECTURE.md``). :func:`build_record`
assembles it from measured parts; the key-path helpers name its values the way the flat rows
do (``after.accuracy``, ``realised.measured_speedup.torch.bs32``), so that the sweep report,
the answer table and the plots spell every path once, here.

The criterion is stored under ``criterion``; records and rows of earlier capl releases call it
``strategy`` (:data:`LEGACY_CRITERION`), which :func:`criterion_of` and the sweep readers still
accept. This module imports no torch: ``capl-report`` reads records without it.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any, TypedDict

__all__ = [
    "ACCURACY_AFTER",
    "ACCURACY_BEFORE",
    "ACCURACY_MACRO_AFTER",
    "ACCURACY_MACRO_BEFORE",
    "CHANCE",
    "CHANNELS_REMOVED",
    "CRITERION",
    "CRITERION_NAME",
    "LEGACY_CRITERION",
    "MACS_REMOVED",
    "NONZERO_PARAMS_REMOVED",
    "PARAMS_REMOVED",
    "SELECTION_TIME",
    "STAGE_FIELDS",
    "THEORETICAL_SPEEDUP",
    "TIMING_PHASES",
    "AccuracyStages",
    "BenchmarkRecord",
    "Classes",
    "InputShapes",
    "RunInfo",
    "Stage",
    "Timings",
    "accuracy_stages",
    "block_key",
    "build_record",
    "criterion_name",
    "criterion_of",
    "efficiency_key",
    "key",
    "latency_key",
    "measured_speedup_key",
    "per_layer_key",
    "realised",
    "run_info",
    "stage_accuracy_key",
    "timing_key",
]

ModelBlock = dict[str, Any]
"""A model's block (``before`` / ``after``): :func:`capl.benchmark.profile_model` plus the
accuracy fields of :func:`capl.evaluation.evaluate_subset`."""


class Stage(TypedDict, total=False):
    """Accuracy of one stage on the selected classes (``batches``: BN recalibration only)."""

    accuracy: float
    accuracy_macro: float
    accuracy_per_class: dict[str, float]
    test_samples: int
    batches: int


class AccuracyStages(TypedDict, total=False):
    """The same k-way task at every stage a pruned network goes through; ``chance = 1 / k``."""

    chance: float
    base: Stage
    pruned: Stage
    bn_recalibrated: Stage
    retrained: Stage


class RunInfo(TypedDict):
    """Where and when the record was written; ``name`` is the sweep point id or ``None``."""

    log_dir: str
    stage: str
    created: str
    name: str | None


class Classes(TypedDict):
    """The selected classes: original indices and names, in the DataModule's order."""

    indices: list[int]
    names: list[str]


class InputShapes(TypedDict):
    """``(C, H, W)`` of the accuracy images and of the benchmark inputs."""

    accuracy: list[int]
    benchmark: list[int]


class Timings(TypedDict):
    """Seconds spent on each preparation phase."""

    selection: float
    removal: float
    retraining: float


class BenchmarkRecord(TypedDict):
    """The content of ``benchmark.json``."""

    capl_version: str
    run: RunInfo
    model: str
    dataset: str
    classes: Classes
    criterion: dict[str, Any] | None
    ratio: float | None
    scope: str | None
    target: str | None
    seed: int | None
    retrain_epochs: int
    best_epoch: int | None
    input_shape: InputShapes
    accuracy_stages: AccuracyStages
    before: ModelBlock
    after: ModelBlock
    realised: dict[str, Any]
    latency_prediction: dict[str, Any] | None
    per_layer: dict[str, dict[str, Any]]
    timings_s: Timings
    environment: dict[str, Any]


CRITERION = "criterion"
LEGACY_CRITERION = "strategy"
"""The criterion's key in records and rows of earlier capl releases (read, never written)."""

STAGE_FIELDS = ("accuracy", "accuracy_macro", "accuracy_per_class", "test_samples")
TIMING_PHASES = ("selection", "removal", "retraining")


# --------------------------------------------------------------------------------------------
# Key paths, as the flat rows of results.csv spell them


def key(*parts: str) -> str:
    """The flat path of a nested value (``key("after", "accuracy") == "after.accuracy"``)."""
    return ".".join(parts)


def block_key(side: str, field: str) -> str:
    """A model block's field: ``block_key("after", "macs") == "after.macs"``."""
    return key(side, field)


def stage_accuracy_key(stage: str) -> str:
    """A stage's accuracy: ``accuracy_stages.<stage>.accuracy``."""
    return key("accuracy_stages", stage, "accuracy")


def measured_speedup_key(backend: str, batch: str) -> str:
    """``realised.measured_speedup.<backend>.<bs N>``."""
    return key("realised", "measured_speedup", backend, batch)


def efficiency_key(backend: str, batch: str) -> str:
    """``realised.efficiency.<backend>.<bs N>`` (measured over theoretical speed-up)."""
    return key("realised", "efficiency", backend, batch)


def latency_key(side: str, backend: str, batch: str, stat: str = "median_ms") -> str:
    """``<side>.latency_ms.<backend>.<bs N>.<stat>``."""
    return key(side, "latency_ms", backend, batch, stat)


def timing_key(phase: str) -> str:
    """``timings_s.<phase>``."""
    return key("timings_s", phase)


def per_layer_key(layer: str, field: str) -> str:
    """``per_layer.<layer>.<field>`` (``before``, ``after`` or ``kind``)."""
    return key("per_layer", layer, field)


CRITERION_NAME = key(CRITERION, "name")
ACCURACY_BEFORE = block_key("before", "accuracy")
ACCURACY_AFTER = block_key("after", "accuracy")
ACCURACY_MACRO_BEFORE = block_key("before", "accuracy_macro")
ACCURACY_MACRO_AFTER = block_key("after", "accuracy_macro")
CHANCE = key("accuracy_stages", "chance")
CHANNELS_REMOVED = key("realised", "channels_removed")
MACS_REMOVED = key("realised", "macs_removed")
PARAMS_REMOVED = key("realised", "params_removed")
NONZERO_PARAMS_REMOVED = key("realised", "nonzero_params_removed")
THEORETICAL_SPEEDUP = key("realised", "theoretical_speedup")
SELECTION_TIME = timing_key("selection")


def criterion_of(record: Mapping[str, Any]) -> Any:
    """The record's criterion (a dict, a bare name or ``None``), under either of its keys."""
    if CRITERION in record:
        return record[CRITERION]
    return record.get(LEGACY_CRITERION)


def criterion_name(record: Mapping[str, Any]) -> str | None:
    """The name of the record's criterion (``None`` for an unpruned run)."""
    criterion = criterion_of(record)
    return criterion.get("name") if isinstance(criterion, Mapping) else criterion


# --------------------------------------------------------------------------------------------
# Sections


def _removed(before: float | None, after: float | None) -> float | None:
    if before is None or after is None or before == 0:
        return None
    return 1.0 - after / before


def _ratio(num: float | None, den: float | None) -> float | None:
    if num is None or den is None or den == 0:
        return None
    return num / den


def _conv_channels(layers: Mapping[str, Mapping[str, Any]]) -> int | None:
    if not layers:
        return None
    return sum(e["live_out_channels"] for e in layers.values() if e["type"] == "Conv2d")


def _speedups(
    before: Mapping[str, Any], after: Mapping[str, Any], theoretical: float | None
) -> tuple[dict[str, dict[str, float | None]], dict[str, dict[str, float | None]]]:
    """Measured speed-up and efficiency per backend and batch both blocks timed."""
    measured: dict[str, dict[str, float | None]] = {}
    efficiency: dict[str, dict[str, float | None]] = {}
    lat_b = before.get("latency_ms") or {}
    lat_a = after.get("latency_ms") or {}
    for backend in lat_b:
        for batch in lat_b[backend]:
            if batch not in lat_a.get(backend, {}):
                continue
            value = _ratio(lat_b[backend][batch]["median_ms"], lat_a[backend][batch]["median_ms"])
            measured.setdefault(backend, {})[batch] = value
            efficiency.setdefault(backend, {})[batch] = _ratio(value, theoretical)
    return measured, efficiency


def removes_zeros(nonzero_params_removed: float | None, params_removed: float | None) -> bool:
    """Whether a pruning mostly zeroed weights in dense shapes (masks) rather than removed shapes.

    Structured pruning removes parameters (and MACs) from the shapes; masks only zero them, so
    the dense parameter count falls by the class-subset head cut alone.

    Args:
        nonzero_params_removed: Fraction of the base's non-zero parameters removed.
        params_removed: Fraction of the base's (dense) parameters removed.
    """
    nonzero, dense = nonzero_params_removed, params_removed
    return bool(nonzero) and dense is not None and nonzero - dense > 0.5 * nonzero


def realised(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, Any]:
    """What the pruning actually bought, from two :func:`capl.benchmark.profile_model` blocks.

    Channels are the output channels of Conv2d layers holding at least one non-zero weight
    (so filter masks count as removed). Speed-ups are ``before / after`` of median latency per
    backend and batch size; ``efficiency`` is measured over theoretical (MACs) speed-up.
    ``size_ratio`` is base size over pruned size; ``sparse_size_ratio`` is base (dense) size
    over the pruned model's sparse size (``None`` when that was not computed).

    Args:
        before: Block of the base model.
        after: Block of the pruned model.

    Returns:
        ``{"channels_before", "channels_after", "channels_removed", "params_removed",
        "nonzero_params_removed", "macs_removed", "conv_linear_macs_removed",
        "size_ratio", "sparse_size_ratio", "theoretical_speedup",
        "measured_speedup": {backend: {"bs<N>": float}},
        "efficiency": {backend: {"bs<N>": float}}}``; fractions in [0, 1] of the base value,
        ``None`` where either side is missing.
    """
    channels_b = _conv_channels(before.get("layers") or {})
    channels_a = _conv_channels(after.get("layers") or {})
    theoretical = _ratio(before.get("macs"), after.get("macs"))
    measured, efficiency = _speedups(before, after, theoretical)
    out: dict[str, Any] = {
        "channels_before": channels_b,
        "channels_after": channels_a,
        "channels_removed": _removed(channels_b, channels_a),
    }
    for field in ("params", "nonzero_params", "macs", "conv_linear_macs"):
        out[f"{field}_removed"] = _removed(before.get(field), after.get(field))
    out["size_ratio"] = _ratio(before.get("size_bytes"), after.get("size_bytes"))
    out["sparse_size_ratio"] = _ratio(before.get("size_bytes"), after.get("sparse_size_bytes"))
    out["theoretical_speedup"] = theoretical
    out["measured_speedup"] = measured
    out["efficiency"] = efficiency
    return out


def _stage(block: Mapping[str, Any]) -> Stage:
    return {k: block[k] for k in STAGE_FIELDS if k in block}  # type: ignore[return-value]


def accuracy_stages(
    before: Mapping[str, Any],
    after: Mapping[str, Any],
    recorded: Mapping[str, Any] | None,
    retrained: bool,
) -> AccuracyStages:
    """Accuracy at each stage on the same k-way task: base, pruned, bn_recalibrated, retrained.

    Args:
        before: The base model's block (its accuracy fields).
        after: The block of the model under test.
        recorded: The stages the PruningCallback measured right after removal (``pruned``,
            ``bn_recalibrated``; they travel with checkpoints), or ``None`` for an unpruned run.
        retrained: Whether the model under test was trained after pruning.

    Returns:
        ``chance`` (``1 / k``) and ``base``; for a pruned run also the recorded stages and
        ``retrained`` (when trained), else ``pruned`` from the model under test when the
        recorded stages lack it (a checkpoint of an older capl).
    """
    stages: dict[str, Any] = {
        "chance": 1.0 / max(1, len(before.get("accuracy_per_class") or {})),
        "base": _stage(before),
    }
    if recorded is None:
        return stages  # type: ignore[return-value]
    stages.update(copy.deepcopy(dict(recorded)))
    if retrained:
        stages["retrained"] = _stage(after)
    elif "pruned" not in stages:
        stages["pruned"] = _stage(after)
    return stages  # type: ignore[return-value]


def run_info(log_dir: str, name: str | None, stage: str = "test") -> RunInfo:
    """The ``run`` section, stamped now (UTC, seconds)."""
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return {"log_dir": log_dir, "stage": stage, "created": created, "name": name}


def build_record(
    *,
    version: str,
    run: RunInfo,
    model: str,
    dataset: str,
    classes: Classes,
    plan: Mapping[str, Any] | None,
    seed: int | None,
    retrain_epochs: int,
    best_epoch: int | None,
    input_shape: InputShapes,
    stages: AccuracyStages,
    before: ModelBlock,
    after: ModelBlock,
    per_layer: dict[str, dict[str, Any]],
    timings: Mapping[str, float],
    environment: dict[str, Any],
    latency_prediction: dict[str, Any] | None = None,
) -> BenchmarkRecord:
    """Assemble ``benchmark.json`` from its measured parts.

    Args:
        version: The capl version writing the record.
        run: The ``run`` section (:func:`run_info`).
        model: The network's name.
        dataset: The DataModule's name.
        classes: The selected classes.
        plan: The pruning plan dict (criterion, config), ``None`` for an unpruned run.
        seed: The run's global seed.
        retrain_epochs: Epochs trained after pruning.
        best_epoch: Epochs done when the tested checkpoint was written.
        input_shape: Accuracy and benchmark input shapes.
        stages: :func:`accuracy_stages`.
        before: The base model's block.
        after: The block of the model under test.
        per_layer: :func:`capl.benchmark.per_layer_diff` of the two models.
        timings: Seconds per phase (missing phases are 0).
        environment: :func:`capl.benchmark.environment_info`.
        latency_prediction: A latency-table plan's prediction next to the measurement.

    Returns:
        The record; ``realised`` is computed from the two blocks.
    """
    config = (plan or {}).get("config") or {}
    return {
        "capl_version": version,
        "run": run,
        "model": model,
        "dataset": dataset,
        "classes": classes,
        "criterion": (plan or {}).get("criterion"),
        "ratio": config.get("ratio"),
        "scope": config.get("scope"),
        "target": config.get("target"),
        "seed": seed,
        "retrain_epochs": retrain_epochs,
        "best_epoch": best_epoch,
        "input_shape": input_shape,
        "accuracy_stages": stages,
        "before": before,
        "after": after,
        "realised": realised(before, after),
        "latency_prediction": latency_prediction,
        "per_layer": per_layer,
        "timings_s": Timings(
            selection=timings.get("selection", 0.0),
            removal=timings.get("removal", 0.0),
            retraining=timings.get("retraining", 0.0),
        ),
        "environment": environment,
    }
