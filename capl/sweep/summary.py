"""Summary statistics of a sweep: rows grouped by configuration, metrics over seeds.

:func:`summarise` groups the rows of ``results.csv`` by :data:`GROUP_COLUMNS` (the same
configuration over different seeds) and aggregates the key metrics (mean, sample standard
deviation, count); :func:`summary_rows` / :func:`write_results_summary` store the groups as
``summary.csv``. The report, the answer table and the plots all read these groups.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from capl.benchmark.record import (
    ACCURACY_AFTER,
    ACCURACY_BEFORE,
    ACCURACY_MACRO_AFTER,
    ACCURACY_MACRO_BEFORE,
    CHANNELS_REMOVED,
    CRITERION_NAME,
    MACS_REMOVED,
    NONZERO_PARAMS_REMOVED,
    PARAMS_REMOVED,
    SELECTION_TIME,
    THEORETICAL_SPEEDUP,
    block_key,
    per_layer_key,
    removes_zeros,
)
from capl.sweep.rows import LATENCY_DIGIT, Scalar, is_ok, natural_key, normalise_row
from capl.sweep.rows import write_results_csv as _write_csv

__all__ = [
    "GROUP_COLUMNS",
    "GROUP_FIELDS",
    "SUMMARY_CSV",
    "summarise",
    "summary_rows",
    "write_results_summary",
]

SUMMARY_CSV = "summary.csv"

#: A summary group: the same configuration over different seeds.
GROUP_COLUMNS: tuple[str, ...] = (
    CRITERION_NAME,
    "scope",
    "target",
    "ratio",
    "retrain_epochs",
    "classes.indices",
)
#: A group's own key for each of :data:`GROUP_COLUMNS`.
GROUP_FIELDS: tuple[str, ...] = (
    "criterion",
    "scope",
    "target",
    "ratio",
    "retrain_epochs",
    "classes",
)

# Metrics summarised over seeds, besides the pattern-matched families below.
_KEY_METRICS: tuple[str, ...] = (
    ACCURACY_BEFORE,
    ACCURACY_AFTER,
    ACCURACY_MACRO_BEFORE,
    ACCURACY_MACRO_AFTER,
    CHANNELS_REMOVED,
    MACS_REMOVED,
    PARAMS_REMOVED,
    NONZERO_PARAMS_REMOVED,
    THEORETICAL_SPEEDUP,
    *(block_key(side, field) for field in ("macs", "params", "size_bytes") for side in
      ("before", "after")),
    block_key("after", "sparse_size_bytes"),
    block_key("after", "peak_memory_bytes"),
)  # fmt: skip
_METRIC_PATTERNS = (
    re.compile(r"^realised\.measured_speedup\.[^.]+\.[^.]+$"),
    re.compile(r"^realised\.efficiency\.[^.]+\.[^.]+$"),
    re.compile(r"^(before|after)\.latency_ms\.[^.]+\.[^.]+\.median_ms$"),
    re.compile(r"^timings_s\.[^.]+$"),
    re.compile(r"^accuracy_stages\.(chance|[^.]+\.accuracy)$"),
)
_PER_LAYER = re.compile(r"^per_layer\.(?P<layer>.+)\.(?P<field>before|after|kind)$")
_BUSY = re.compile(r"^(before|after)\.latency_ms\.([^.]+)\.([^.]+)\.busy$")


def _metric_columns(columns: Iterable[str]) -> list[str]:
    columns = set(columns)
    found = [name for name in _KEY_METRICS if name in columns]
    found += sorted(
        (
            name
            for name in columns
            if any(p.match(name) for p in _METRIC_PATTERNS) and not LATENCY_DIGIT.match(name)
        ),
        key=natural_key,
    )
    return found


def _stat(values: Sequence[float]) -> dict[str, float | int | None]:
    """Mean, sample standard deviation (``ddof=1``; ``None`` below two values) and count."""
    n = len(values)
    if n == 0:
        return {"mean": None, "std": None, "count": 0}
    mean = math.fsum(values) / n
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return {"mean": mean, "std": std, "count": n}


def _numbers(rows: Iterable[Mapping[str, Any]], column: str) -> list[float]:
    out = []
    for row in rows:
        value = row.get(column)
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            out.append(float(value))
    return out


def _sort_value(value: Any) -> tuple:
    if value is None:
        return (0, 0, "")
    if isinstance(value, int | float):
        return (1, value, "")
    return (2, 0, str(value))


def _layers(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """Layer names with per-layer columns, in network order (first-seen column order)."""
    layers: dict[str, None] = {}
    for row in rows:
        for name in row:
            match = _PER_LAYER.match(name)
            if match:
                layers.setdefault(match["layer"])
    return list(layers)


def _ordered(groups: Mapping[tuple, Any]) -> list[tuple]:
    """Group keys in report order.

    The baseline first, then the criteria in order of first appearance, each by scope, target,
    classes, epochs and ratio.
    """
    criterion_order: dict[Any, int] = {None: -1}
    for key in groups:
        criterion_order.setdefault(key[0], len(criterion_order))

    def order(key: tuple) -> tuple:
        criterion, scope, target, ratio, epochs, classes = key
        rest = (scope, target, classes, epochs, ratio)
        return (criterion_order[criterion], *(_sort_value(v) for v in rest))

    return sorted(groups, key=order)


def _group(
    key: tuple,
    ok: Sequence[Mapping[str, Any]],
    failed: Sequence[Mapping[str, Any]],
    metrics: Sequence[str],
    layers: Sequence[str],
) -> dict[str, Any]:
    group: dict[str, Any] = dict(zip(GROUP_FIELDS, key))
    group["count"] = len(ok)
    group["failed"] = len(failed)
    group["seeds"] = [row.get("seed") for row in ok]
    group["point_ids"] = [row.get("point_id") for row in ok]
    group["errors"] = [(row.get("point_id"), row.get("error")) for row in failed]
    # selection time: averaged only over points that computed their scores
    computed = [row for row in ok if not row.get("scores_cached")]
    group["metrics"] = {
        name: _stat(_numbers(computed if name == SELECTION_TIME else ok, name)) for name in metrics
    }
    group["per_layer"] = _per_layer(ok, layers)
    group["masked"] = _removes_zeros(group["metrics"])
    group["busy"] = _busy_cells(ok)
    return group


def summarise(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Group rows by configuration and aggregate the key metrics over seeds.

    Groups are keyed by :data:`GROUP_COLUMNS` (criterion, scope, target, ratio, retraining epochs
    and class subset); only successful rows enter the statistics, failed ones are counted and
    their errors kept. The baseline (``criterion.name`` empty) comes first, then the criteria in
    order of first appearance, each by scope, target, classes, epochs and ratio.

    Args:
        rows: Rows as read by :func:`capl.sweep.rows.read_results_csv`.

    Returns:
        One dict per group with keys ``criterion``, ``scope``, ``target``, ``ratio``,
        ``retrain_epochs``, ``classes`` (the group values), ``count`` (successful runs),
        ``failed`` (failed runs), ``seeds``, ``point_ids``, ``errors`` (``(point_id, error)``
        pairs), ``metrics`` (column -> ``{"mean", "std", "count"}``, ``std`` the sample
        standard deviation over seeds, ``None`` for a single run), ``per_layer`` (layer ->
        the same statistics of the kept fraction ``after / before``, plus ``before`` and
        ``kind``; layers in network order, i.e. first-seen column order), ``masked`` and
        ``busy`` (``(backend, batch)`` cells timed on a busy machine).
    """
    rows = [normalise_row(row) for row in rows]
    groups: dict[tuple, dict[str, list]] = {}
    for row in rows:
        key = tuple(row.get(name) for name in GROUP_COLUMNS)
        bucket = groups.setdefault(key, {"ok": [], "failed": []})
        bucket["ok" if is_ok(row) else "failed"].append(row)
    columns: set[str] = set()
    for row in rows:
        columns.update(row)
    metrics = _metric_columns(columns)
    layers = _layers(rows)
    return [
        _group(key, groups[key]["ok"], groups[key]["failed"], metrics, layers)
        for key in _ordered(groups)
    ]


def _removes_zeros(metrics: Mapping[str, Mapping[str, Any]]) -> bool:
    """A group of mask-criterion points (:func:`capl.benchmark.record.removes_zeros`, on means)."""
    nonzero = (metrics.get(NONZERO_PARAMS_REMOVED) or {}).get("mean")
    return removes_zeros(nonzero, (metrics.get(PARAMS_REMOVED) or {}).get("mean"))


def _busy_cells(rows: Iterable[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """``(backend, batch)`` cells where some run's base or pruned latency was flagged busy."""
    cells = {
        (match[2], match[3])
        for row in rows
        for name, value in row.items()
        if value is True and (match := _BUSY.match(name))
    }
    return sorted(cells)


def _per_layer(rows: Sequence[Mapping[str, Any]], layers: Iterable[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for layer in layers:
        kept, before = [], []
        kind = None
        for row in rows:
            b, a = row.get(per_layer_key(layer, "before")), row.get(per_layer_key(layer, "after"))
            kind = kind or row.get(per_layer_key(layer, "kind"))
            if isinstance(b, int | float) and isinstance(a, int | float) and b > 0:
                kept.append(a / b)
                before.append(float(b))
        if kept:
            out[layer] = {**_stat(kept), "before": _stat(before)["mean"], "kind": kind}
    return out


def summary_rows(summary: Sequence[Mapping[str, Any]]) -> list[dict[str, Scalar]]:
    """Flatten :func:`summarise`'s groups into CSV rows (``<metric>.mean|std|count`` columns)."""
    out = []
    for group in summary:
        row: dict[str, Scalar] = {
            column: group[field] for column, field in zip(GROUP_COLUMNS, GROUP_FIELDS)
        }
        row["count"] = group["count"]
        row["failed"] = group["failed"]
        row["seeds"] = ";".join(str(s) for s in group["seeds"])
        for name, stat in group["metrics"].items():
            for field, value in stat.items():
                row[f"{name}.{field}"] = value
        out.append(row)
    return out


def write_results_summary(summary: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Write :func:`summarise`'s groups as a CSV (one row per configuration)."""
    return _write_csv(summary_rows(summary), path)
