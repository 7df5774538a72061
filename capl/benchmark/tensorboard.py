"""Send a benchmark result (the content of ``benchmark.json``) to Lightning loggers."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Mapping
from typing import Any

from capl.benchmark.record import criterion_name, removes_zeros

logger = logging.getLogger(__name__)

_BLOCK_SCALARS = (
    "accuracy",
    "accuracy_macro",
    "macs",
    "conv_linear_macs",
    "params",
    "nonzero_params",
    "size_bytes",
    "sparse_size_bytes",
    "peak_memory_bytes",
)
_REALISED_SCALARS = (
    "channels_removed",
    "params_removed",
    "nonzero_params_removed",
    "macs_removed",
    "size_ratio",
    "theoretical_speedup",
)
_HPARAMS = ("model", "dataset", "criterion", "ratio", "scope", "target", "seed", "retrain_epochs")


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def benchmark_scalars(result: Mapping[str, Any], prefix: str = "benchmark") -> dict[str, float]:
    """Flatten the headline numbers of a benchmark result into ``{tag: value}``.

    Args:
        result: A dict with ``before``/``after`` blocks and ``realised`` (see
            :func:`capl.benchmark.compare_models`); accuracy fields are used when present.
        prefix: Tag prefix.

    Returns:
        Tags like ``benchmark/after/macs``, ``benchmark/after/latency_ms/torch/bs1`` and
        ``benchmark/realised/measured_speedup/onnxruntime/bs32``; missing values are skipped.
    """
    out: dict[str, float] = {}

    def put(tag: str, value: Any) -> None:
        number = _number(value)
        if number is not None:
            out[f"{prefix}/{tag}"] = number

    for side in ("before", "after"):
        block = result.get(side) or {}
        for key in _BLOCK_SCALARS:
            put(f"{side}/{key}", block.get(key))
        for backend, per_batch in (block.get("latency_ms") or {}).items():
            for batch, lat in per_batch.items():
                put(f"{side}/latency_ms/{backend}/{batch}", lat.get("median_ms"))
    realised = result.get("realised") or {}
    for key in _REALISED_SCALARS:
        put(f"realised/{key}", realised.get(key))
    for group in ("measured_speedup", "efficiency"):
        for backend, per_batch in (realised.get(group) or {}).items():
            for batch, value in per_batch.items():
                put(f"realised/{group}/{backend}/{batch}", value)
    for stage, entry in (result.get("accuracy_stages") or {}).items():
        put(
            f"accuracy_stages/{stage}",
            entry.get("accuracy") if isinstance(entry, Mapping) else entry,
        )
    return out


def run_label(result: Mapping[str, Any]) -> str:
    """``OCAP (global, target macs): 57.1 % of channels, 60.3 % of MACs removed``.

    What a benchmark result pruned and how much was really removed, not the ratio asked for:
    ratios rounded to the same widths give the same label (and figure), and the point's run
    name and hyper-parameters still carry its ratio. Masks
    (:func:`capl.benchmark.record.removes_zeros`) are labelled by the weights they zeroed.
    """
    name = criterion_name(result)
    if not name:
        return "unpruned"
    details = [str(v) for v in (result.get("scope"),) if v]
    if result.get("target"):
        details.append(f"target {result['target']}")
    text = f"{name} ({', '.join(details)})" if details else str(name)
    realised = result.get("realised") or {}
    zeroed = _number(realised.get("nonzero_params_removed"))
    if removes_zeros(zeroed, _number(realised.get("params_removed"))):
        return f"{text}: {100 * zeroed:.1f} % of weights zeroed"
    channels = _number(realised.get("channels_removed"))
    macs = _number(realised.get("macs_removed"))
    if channels is None or macs is None:
        return text
    return f"{text}: {100 * channels:.1f} % of channels, {100 * macs:.1f} % of MACs removed"


def per_layer_figure(per_layer: Mapping[str, Mapping[str, Any]], label: str = "") -> Any:
    """A bar chart of the fraction kept per prunable layer (channels or non-zero weights).

    Args:
        per_layer: The ``per_layer`` dict of a benchmark result.
        label: What was pruned (:func:`run_label`), shown in the title.

    Returns:
        A ``matplotlib.figure.Figure`` (not attached to pyplot, so nothing leaks).
    """
    from matplotlib.figure import Figure

    names, kept = [], []
    for name, entry in per_layer.items():
        before, after = entry.get("before"), entry.get("after")
        if before:
            names.append(name)
            kept.append((after or 0) / before)
    figure = Figure(figsize=(max(6.0, 0.25 * len(names)), 4.0))
    axes = figure.add_subplot()
    axes.bar(range(len(names)), kept, color="tab:blue")
    axes.set_xticks(range(len(names)), names, rotation=90, fontsize=6)
    axes.set_ylim(0, 1.05)
    axes.set_ylabel("fraction kept")
    title = "share kept per layer (channels, or non-zero weights for masks)"
    axes.set_title(f"{label}: {title}" if label else title)
    figure.tight_layout()
    return figure


def per_class_figure(before: Mapping[str, float], after: Mapping[str, float]) -> Any:
    """Grouped bars of each class's test accuracy before and after pruning.

    Args:
        before: ``accuracy_per_class`` of the base model (class name -> fraction).
        after: ``accuracy_per_class`` of the model under test.

    Returns:
        A ``matplotlib.figure.Figure``.
    """
    from matplotlib.figure import Figure

    names = list(before)
    positions = range(len(names))
    figure = Figure(figsize=(max(5.0, 0.6 * len(names)), 3.5))
    axes = figure.add_subplot()
    width = 0.4
    axes.bar([p - width / 2 for p in positions], [100 * before[n] for n in names], width,
             label="before", color="tab:gray")  # fmt: skip
    axes.bar([p + width / 2 for p in positions], [100 * after.get(n, 0.0) for n in names], width,
             label="after", color="tab:blue")  # fmt: skip
    axes.set_xticks(list(positions), names, rotation=45 if len(names) > 8 else 0)
    axes.set_ylim(0, 105)
    axes.set_ylabel("test accuracy (%)")
    axes.set_title("per-class accuracy on the selected classes")
    axes.legend(loc="lower right")
    figure.tight_layout()
    return figure


def log_benchmark(lightning_logger: Any, result: Mapping[str, Any]) -> None:
    """Log scalars, hyper-parameters, per-layer and per-class figures of ``result`` to a logger.

    Scalars go through ``log_metrics`` (any Lightning logger). Hyper-parameters with the
    headline metrics and the figure plus a text table go to TensorBoard only (loggers whose
    ``experiment`` has ``add_figure``). Logging is best effort: failures are logged as
    warnings, because ``benchmark.json`` is already written when this runs.

    Args:
        lightning_logger: A ``lightning.pytorch.loggers.Logger``.
        result: The benchmark result.
    """
    scalars = benchmark_scalars(result)
    try:
        if scalars:
            lightning_logger.log_metrics(scalars)
    except Exception as error:
        logger.warning("could not log benchmark scalars: %s", error)
    experiment = getattr(lightning_logger, "experiment", None)
    if experiment is None or not hasattr(experiment, "add_figure"):
        return
    try:
        hparams = {key: result.get(key) for key in _HPARAMS if key in result}
        hparams["criterion"] = criterion_name(result)
        hparams = {k: v for k, v in hparams.items() if isinstance(v, str | int | float | bool)}
        if hparams:
            # hp_metric: the accuracy of the pruned (or pruned and retrained) model under test
            accuracy = _number((result.get("after") or {}).get("accuracy"))
            metrics = {**scalars, **({"hp_metric": accuracy} if accuracy is not None else {})}
            lightning_logger.log_hyperparams(hparams, metrics=metrics)
        if result.get("per_layer"):
            _add_figure(experiment, "per_layer", result["per_layer"], run_label(result))
        before, after = result.get("before") or {}, result.get("after") or {}
        if before.get("accuracy_per_class") and after.get("accuracy_per_class"):
            classes = before["accuracy_per_class"], after["accuracy_per_class"]
            _add_figure(experiment, "per_class_accuracy", *classes)
        if result.get("before") and result.get("after"):
            from capl.benchmark.table import format_table

            table = format_table(result["before"], result["after"])
            experiment.add_text("benchmark/summary", f"```\n{table}\n```")
    except Exception as error:
        logger.warning("could not log benchmark figures/hparams to TensorBoard: %s", error)


_FIGURES = {"per_layer": per_layer_figure, "per_class_accuracy": per_class_figure}


def _add_figure(experiment: Any, kind: str, *data: Any) -> None:
    """Add the ``kind`` figure of ``data`` as ``benchmark/<kind>``, rendered once per content.

    A sweep logs many points whose figures are equal (points pruned to the same network, seeds
    of a deterministic criterion); rendering is most of the logging's time.
    """
    tag = f"benchmark/{kind}"
    if not hasattr(experiment, "add_image"):
        experiment.add_figure(tag, _FIGURES[kind](*data))
        return
    experiment.add_image(tag, _rendered(kind, json.dumps(data)), dataformats="HWC")


@functools.lru_cache(maxsize=16)
def _rendered(kind: str, data: str) -> Any:
    """The figure drawn as ``add_figure`` draws it (Agg): an HWC uint8 RGB array."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(_FIGURES[kind](*json.loads(data)))
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
