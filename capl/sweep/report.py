"""Sweep results: one flat CSV row per grid point, a Markdown report and plots.

A sweep writes one ``benchmark.json`` per grid point (schema in ``docs/ARCHITECTURE.md``). The
runner turns each into a flat row with :func:`result_row` (or :func:`flatten`), appends its
bookkeeping columns and stores them all with :func:`write_results_csv`. Everything after that
works from ``results.csv`` alone, so ``capl-report FOLDER`` can regenerate ``report.md``,
``summary.csv`` and the plots long after the runs are gone.

CSV conventions:

* Nested keys are joined with ``"."`` (``after.accuracy``,
  ``realised.measured_speedup.torch.bs1``, ``per_layer.layer1.0.conv1.after``).
* Lists become ``";"``-joined strings (``classes.indices = "3;5;7"``).
* An unpruned (baseline) run has ``strategy.name`` empty.
* Bookkeeping columns (:data:`BOOKKEEPING_COLUMNS`) come first, then all other columns in natural
  sort order, then the ``per_layer.*`` columns in network order (as ``benchmark.json`` lists
  them); ``status`` is ``"ok"`` or ``"failed"`` and ``error`` holds a failed point's message.
* Empty cells read back as ``None``; numbers as ``int`` / ``float``; ``True`` / ``False`` as bool.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from capl.io import write_text_atomic

__all__ = [
    "BOOKKEEPING_COLUMNS",
    "GROUP_COLUMNS",
    "flatten",
    "format_bytes",
    "format_percent",
    "format_speedup",
    "is_ok",
    "normalise_row",
    "read_results_csv",
    "render_report",
    "result_row",
    "summarise",
    "write_report",
    "write_results_csv",
]

log = logging.getLogger(__name__)

Scalar = str | int | float | bool | None

RESULTS_CSV = "results.csv"
SUMMARY_CSV = "summary.csv"
REPORT_MD = "report.md"

#: Sweep bookkeeping columns, written first and in this order when present.
BOOKKEEPING_COLUMNS: tuple[str, ...] = (
    "point_id",
    "index",
    "status",
    "error",
    "duration_s",
    "benchmark_path",
)

#: A summary group: the same configuration over different seeds.
GROUP_COLUMNS: tuple[str, ...] = (
    "strategy.name",
    "scope",
    "target",
    "ratio",
    "retrain_epochs",
    "classes.indices",
)

# Columns that stay strings even when a value looks like a number ("0003", "7", "2.1").
_STRING_COLUMNS = frozenset(
    {
        "point_id",
        "status",
        "error",
        "benchmark_path",
        "capl_version",
        "model",
        "dataset",
        "classes.indices",
        "classes.names",
        "strategy.name",
        "scope",
        "target",
    }
)
_STRING_PREFIXES = ("run.", "environment.")  # free text, except plain integers
_STRING_SUFFIXES = (".peak_memory_method", ".kind")

# Metrics summarised over seeds, besides the pattern-matched families below.
_KEY_METRICS: tuple[str, ...] = (
    "before.accuracy",
    "after.accuracy",
    "before.accuracy_macro",
    "after.accuracy_macro",
    "realised.channels_removed",
    "realised.macs_removed",
    "realised.params_removed",
    "realised.nonzero_params_removed",
    "realised.theoretical_speedup",
    "before.macs",
    "after.macs",
    "before.params",
    "after.params",
    "before.size_bytes",
    "after.size_bytes",
    "after.sparse_size_bytes",
    "after.peak_memory_bytes",
)
_METRIC_PATTERNS = (
    re.compile(r"^realised\.measured_speedup\.[^.]+\.[^.]+$"),
    re.compile(r"^realised\.efficiency\.[^.]+\.[^.]+$"),
    re.compile(r"^(before|after)\.latency_ms\.[^.]+\.[^.]+\.median_ms$"),
    re.compile(r"^timings_s\.[^.]+$"),
    re.compile(r"^accuracy_stages\.(chance|[^.]+\.accuracy)$"),
)
_SKIPPED_PREFIXES = ("before.layers.", "after.layers.")
_PER_LAYER = re.compile(r"^per_layer\.(?P<layer>.+)\.(?P<field>before|after|kind)$")
_TIMING_ORDER = ("selection", "removal", "retraining")
#: Averaged only over points that computed their scores (``scores_cached`` not true).
_SELECTION_TIMING = "timings_s.selection"
_NA = "-"  # shown for a missing value


# --------------------------------------------------------------------------------------------
# Rows


def flatten(benchmark: Mapping[str, Any], sep: str = ".") -> dict[str, Scalar]:
    """Flatten one ``benchmark.json`` dict into a CSV row.

    Nested keys are joined with ``sep``; lists of scalars become ``";"``-joined strings; a
    ``null`` strategy (unpruned run) becomes ``strategy.name = None`` so that every row has the
    column the report groups by. The model blocks' raw layer tables (``before.layers``,
    ``after.layers``) are left out: ``per_layer`` holds their comparison, and the
    ``benchmark.json`` next to each point keeps the full record.

    Args:
        benchmark: The parsed ``benchmark.json``.
        sep: Separator for nested keys.

    Returns:
        A flat mapping from column name to scalar.
    """
    row: dict[str, Scalar] = {}
    _flatten_into(row, "", benchmark, sep)
    for key in [k for k in row if k.startswith(_SKIPPED_PREFIXES)]:
        del row[key]
    strategy = benchmark.get("strategy", ...)
    if strategy is None or isinstance(strategy, str):  # unpruned, or a bare criterion name
        row.pop("strategy", None)
        row[f"strategy{sep}name"] = strategy
    return row


def _flatten_into(row: dict[str, Scalar], prefix: str, value: Any, sep: str) -> None:
    if isinstance(value, Mapping):
        for key, item in value.items():
            _flatten_into(row, f"{prefix}{sep}{key}" if prefix else str(key), item, sep)
    elif isinstance(value, list | tuple):
        if all(item is None or isinstance(item, str | int | float | bool) for item in value):
            row[prefix] = ";".join("" if item is None else str(item) for item in value)
        else:  # nested structures inside lists have no natural column form
            row[prefix] = json.dumps(value, sort_keys=True)
    elif value is None or isinstance(value, str | int | float | bool):
        row[prefix] = value
    elif hasattr(value, "item"):  # numpy / torch scalars
        row[prefix] = value.item()
    else:
        row[prefix] = str(value)


def result_row(
    point_id: str,
    benchmark: Mapping[str, Any] | None = None,
    *,
    error: str | None = None,
    point: Mapping[str, Any] | None = None,
    **extra: Scalar,
) -> dict[str, Scalar]:
    """Build one ``results.csv`` row for a grid point, successful or failed.

    Args:
        point_id: The grid point's identifier.
        benchmark: The point's ``benchmark.json``; ``None`` for a failed point.
        error: The failure message; makes the row ``status = "failed"``.
        point: The grid point's settings in ``benchmark.json`` shape (``{"strategy": {"name":
            "OCAP"}, "ratio": 0.5, "seed": 0, ...}``) so that failed rows still group and show
            in the report; where ``benchmark`` has the same key, its value wins.
        **extra: Further bookkeeping columns (``index``, ``duration_s``, ...).

    Returns:
        The flat row.
    """
    row: dict[str, Scalar] = {"point_id": point_id}
    row["status"] = "failed" if error is not None or benchmark is None else "ok"
    row["error"] = error
    row.update(extra)
    if point is not None:
        row.update(flatten(point))
    if benchmark is not None:
        row.update(flatten(benchmark))
    return row


_SPEEDUP_NESTED = re.compile(r"^realised\.speedup\.([^.]+)\.([^.]+)\.(measured|efficiency)$")
_LATENCY_DIGIT = re.compile(r"^(before|after)\.latency_ms\.([^.]+)\.(\d+)\.median_ms$")
_LAYER_CHANNELS = re.compile(
    r"^per_layer\.(?P<layer>.+)\.(?P<live>live_)?out_channels_(?P<side>before|after)$"
)


def _batch_label(batch: str) -> str:
    return f"bs{batch}" if batch.isdigit() else batch


def normalise_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """Add the canonical metric columns the report reads, where a row spells them differently.

    The architecture contract names ``realised.measured_speedup.<backend>.bs<N>``,
    ``<side>.latency_ms.<backend>.bs<N>.median_ms`` and ``per_layer.<layer>.before|after``;
    benchmark code may also write ``realised.speedup.<backend>.<N>.measured|efficiency``,
    batch keys without the ``bs`` prefix and ``per_layer.<layer>.[live_]out_channels_before|
    after`` (live channels preferred: masked filters count as removed). Existing canonical
    values are never overwritten.

    Args:
        row: One flat row.

    Returns:
        A new row with the canonical columns added.
    """
    out = dict(row)
    live_layers = set()
    for key, value in row.items():
        match = _SPEEDUP_NESTED.match(key)
        if match:
            backend, batch, field = match.groups()
            name = "measured_speedup" if field == "measured" else "efficiency"
            out.setdefault(f"realised.{name}.{backend}.{_batch_label(batch)}", value)
            continue
        match = _LATENCY_DIGIT.match(key)
        if match:
            side, backend, batch = match.groups()
            out.setdefault(f"{side}.latency_ms.{backend}.{_batch_label(batch)}.median_ms", value)
            continue
        match = _LAYER_CHANNELS.match(key)
        if match and match["live"]:
            live_layers.add(match["layer"])
    for key, value in row.items():
        match = _LAYER_CHANNELS.match(key)
        if match and (match["live"] or match["layer"] not in live_layers):
            out.setdefault(f"per_layer.{match['layer']}.{match['side']}", value)
            out.setdefault(f"per_layer.{match['layer']}.kind", "channels")
    return out


def is_ok(row: Mapping[str, Any]) -> bool:
    """Whether a row is a successful grid point (rows without ``status`` count as successful)."""
    return (row.get("status") or "ok") == "ok"


def natural_key(text: str) -> tuple:
    """Sort key that orders embedded numbers numerically (``features.2`` before ``features.10``)."""
    parts = re.split(r"(\d+)", text)
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts)


def _columns(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for row in rows:
        seen.update(dict.fromkeys(row))
    lead = [name for name in BOOKKEEPING_COLUMNS if name in seen]
    layers = [name for name in seen if name.startswith("per_layer.")]  # network order
    rest = sorted(set(seen).difference(lead, layers), key=natural_key)
    return lead + rest + layers


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)  # shortest string that reads back to the same float
    return str(value)


def write_results_csv(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Write rows to a CSV file atomically.

    Columns are the union over all rows: bookkeeping first (:data:`BOOKKEEPING_COLUMNS`), then
    the rest in natural sort order, except ``per_layer.*`` columns, which come last in their
    first-seen (network) order. Missing values are empty cells.

    Args:
        rows: Flat rows (see :func:`flatten`, :func:`result_row`).
        path: Destination file.

    Returns:
        The destination path.
    """
    columns = _columns(rows)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(name)) for name in columns])
    return write_text_atomic(path, buffer.getvalue())


def _parse(column: str, text: str) -> Scalar:
    if text == "":
        return None
    if column in _STRING_COLUMNS or column.endswith(_STRING_SUFFIXES):
        return text
    if text in ("True", "False"):
        return text == "True"
    if column.startswith(_STRING_PREFIXES):
        # Thread counts are integers, but "2.10" (a version) must not turn into 2.1.
        return int(text) if re.fullmatch(r"-?\d+", text) else text
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def read_results_csv(path: str | Path) -> list[dict[str, Scalar]]:
    """Read a CSV written by :func:`write_results_csv`, restoring value types.

    The file is checked for the damage a cut or a mixed-up copy leaves, so that a half row is
    never reported as data: every row must have exactly the header's cells, the file must end
    with a complete line, and a ``status`` column holds only ``ok``/``failed``.

    Args:
        path: The CSV file.

    Returns:
        One dict per row; empty cells are ``None``, numbers ``int`` or ``float``.

    Raises:
        ValueError: The file is damaged (the message says how to rebuild it).
    """
    text = Path(path).read_text(encoding="utf-8")
    if text and not text.endswith("\n"):
        raise _damaged(path, "its last line is incomplete")
    try:
        records = list(csv.reader(io.StringIO(text, newline=""), strict=True))
    except csv.Error as err:
        raise _damaged(path, f"not valid CSV: {err}") from None
    if not records:
        return []
    header, body = records[0], records[1:]
    rows = []
    for number, record in enumerate(body, start=2):
        if len(record) != len(header):
            raise _damaged(path, f"line {number} has {len(record)} of {len(header)} cells")
        row = {column: _parse(column, cell) for column, cell in zip(header, record) if column}
        if row.get("status") not in (None, "ok", "failed") or (
            "point_id" in row and not row["point_id"]
        ):
            raise _damaged(path, f"line {number} has no valid point_id/status")
        rows.append(row)
    return rows


def _damaged(path: str | Path, reason: str) -> ValueError:
    folder = Path(path).parent
    return ValueError(
        f"{path} is damaged ({reason}; cut while written or edited?): nothing was reported; "
        f"rebuild it from the point records with capl-sweep --config SWEEP.yaml --output "
        f"{folder} --merge"
    )


# --------------------------------------------------------------------------------------------
# Summary


def _metric_columns(columns: Iterable[str]) -> list[str]:
    columns = set(columns)
    found = [name for name in _KEY_METRICS if name in columns]
    found += sorted(
        (
            name
            for name in columns
            if any(p.match(name) for p in _METRIC_PATTERNS) and not _LATENCY_DIGIT.match(name)
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


def summarise(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Group rows by configuration and aggregate the key metrics over seeds.

    Groups are keyed by :data:`GROUP_COLUMNS` (criterion, scope, target, ratio, retraining epochs
    and class subset); only successful rows enter the statistics, failed ones are counted and
    their errors kept. The baseline (``strategy.name`` empty) comes first, then the criteria in
    order of first appearance, each by scope, target, classes, epochs and ratio.

    Args:
        rows: Rows as read by :func:`read_results_csv`.

    Returns:
        One dict per group with keys ``strategy``, ``scope``, ``target``, ``ratio``,
        ``retrain_epochs``, ``classes`` (the group values), ``count`` (successful runs),
        ``failed`` (failed runs), ``seeds``, ``point_ids``, ``errors`` (``(point_id, error)``
        pairs), ``metrics`` (column -> ``{"mean", "std", "count"}``, ``std`` the sample
        standard deviation over seeds, ``None`` for a single run) and ``per_layer`` (layer ->
        the same statistics of the kept fraction ``after / before``, plus ``before`` and
        ``kind``; layers in network order, i.e. first-seen column order).
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
    layers: dict[str, None] = {}  # network order: first-seen column order
    for row in rows:
        for name in row:
            match = _PER_LAYER.match(name)
            if match:
                layers.setdefault(match["layer"])

    strategy_order: dict[Any, int] = {None: -1}
    for key in groups:
        strategy_order.setdefault(key[0], len(strategy_order))

    def order(key: tuple) -> tuple:
        strategy, scope, target, ratio, epochs, classes = key
        return (
            strategy_order[strategy],
            _sort_value(scope),
            _sort_value(target),
            _sort_value(classes),
            _sort_value(epochs),
            _sort_value(ratio),
        )

    summary = []
    for key in sorted(groups, key=order):
        ok, failed = groups[key]["ok"], groups[key]["failed"]
        group: dict[str, Any] = dict(
            zip(("strategy", "scope", "target", "ratio", "retrain_epochs", "classes"), key)
        )
        group["count"] = len(ok)
        group["failed"] = len(failed)
        group["seeds"] = [row.get("seed") for row in ok]
        group["point_ids"] = [row.get("point_id") for row in ok]
        group["errors"] = [(row.get("point_id"), row.get("error")) for row in failed]
        computed = [row for row in ok if not row.get("scores_cached")]
        group["metrics"] = {
            name: _stat(_numbers(computed if name == _SELECTION_TIMING else ok, name))
            for name in metrics
        }
        group["per_layer"] = _per_layer(ok, layers)
        group["masked"] = _removes_zeros(group["metrics"])
        group["busy"] = _busy_cells(ok)
        summary.append(group)
    return summary


def _removes_zeros(metrics: Mapping[str, Mapping[str, Any]]) -> bool:
    """A mask criterion: most of what it removed became zeros in dense shapes, not removed shapes.

    Structured pruning removes parameters (and MACs) from the shapes; masks only zero them, so
    the dense parameter count falls by the class-subset head cut alone.
    """
    nonzero = (metrics.get("realised.nonzero_params_removed") or {}).get("mean")
    dense = (metrics.get("realised.params_removed") or {}).get("mean")
    return bool(nonzero) and dense is not None and nonzero - dense > 0.5 * nonzero


_BUSY = re.compile(r"^(before|after)\.latency_ms\.([^.]+)\.([^.]+)\.busy$")
_BUSY_MARK = "†"


def _busy_cells(rows: Iterable[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """``(backend, batch)`` cells where some run's base or pruned latency was flagged busy."""
    cells = {
        (match[2], match[3])
        for row in rows
        for name, value in row.items()
        if value is True and (match := _BUSY.match(name))
    }
    return sorted(cells)


def _mark_busy(text: str, group: Mapping[str, Any], backend: str, batch: str) -> str:
    return text + _BUSY_MARK if (backend, batch) in group.get("busy", ()) else text


def _per_layer(rows: Sequence[Mapping[str, Any]], layers: Iterable[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for layer in layers:
        kept, before = [], []
        kind = None
        for row in rows:
            b, a = row.get(f"per_layer.{layer}.before"), row.get(f"per_layer.{layer}.after")
            kind = kind or row.get(f"per_layer.{layer}.kind")
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
            "strategy.name": group["strategy"],
            "scope": group["scope"],
            "target": group["target"],
            "ratio": group["ratio"],
            "retrain_epochs": group["retrain_epochs"],
            "classes.indices": group["classes"],
            "count": group["count"],
            "failed": group["failed"],
            "seeds": ";".join(str(s) for s in group["seeds"]),
        }
        for name, stat in group["metrics"].items():
            for field, value in stat.items():
                row[f"{name}.{field}"] = value
        out.append(row)
    return out


# --------------------------------------------------------------------------------------------
# Formatting


def _mean_std(
    value: float | None, std: float | None, fmt: Callable[[float], str], mark: str = ""
) -> str:
    """``fmt(value) + mark``, then `` ± fmt(std)`` when ``std`` is given; ``-`` for no value."""
    if value is None:
        return _NA
    return fmt(value) + mark + ("" if std is None else f" ± {fmt(std)}")


def format_percent(value: float | None, std: float | None = None, digits: int = 2) -> str:
    """Format a fraction as a percentage number (``0.9321 -> "93.21"``), with ``± std``."""
    return _mean_std(value, std, lambda v: f"{100 * v:.{digits}f}")


def format_bytes(value: float | None, std: float | None = None) -> str:
    """Format a byte count in B, KiB or MiB (``1536 -> "1.50 KiB"``), with ``± std``."""
    if value is None:
        return _NA
    unit, scale = next(
        ((u, s) for u, s in (("MiB", 1024**2), ("KiB", 1024)) if abs(value) >= s), ("B", 1)
    )
    digits = 0 if unit == "B" else 2
    return f"{_mean_std(value, std, lambda v: f'{v / scale:.{digits}f}')} {unit}"


def format_speedup(value: float | None, std: float | None = None) -> str:
    """Format a speed-up factor as ``"1.83x"``, with ``± std``."""
    return _mean_std(value, std, lambda v: f"{v:.2f}", mark="x")


def _format_count(value: float | None, std: float | None = None) -> str:
    """Format large counts (MACs, parameters) with an SI suffix (``1.81e9 -> "1.81G"``)."""
    if value is None:
        return _NA
    suffix, scale = next(
        ((u, s) for u, s in (("G", 1e9), ("M", 1e6), ("k", 1e3)) if abs(value) >= s), ("", 1.0)
    )
    text = f"{value / scale:.2f}{suffix}" if suffix else f"{value:.0f}"
    if std is not None:
        text += f" ± {std / scale:.2f}{suffix}"
    return text


def _format_seconds(value: float | None, std: float | None = None) -> str:
    return _mean_std(value, std, lambda v: f"{v:.2f}")


def _format_ratio(value: Any) -> str:
    if isinstance(value, int | float):
        return f"{value:g}"
    return _NA if value is None else str(value)


def _cell_text(value: Any) -> str:
    text = _NA if value is None or value == "" else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell_text(cell) for cell in line) + " |" for line in body]
    return "\n".join(lines)


def _stat_of(group: Mapping[str, Any], name: str) -> tuple[float | None, float | None]:
    stat = group["metrics"].get(name)
    return (None, None) if stat is None else (stat["mean"], stat["std"])


def _backends(columns: Iterable[str]) -> list[tuple[str, str]]:
    """``(backend, batch)`` pairs with a measured speed-up column, torch first."""
    pairs = set()
    for name in columns:
        match = re.match(r"^realised\.measured_speedup\.([^.]+)\.([^.]+)$", name)
        if match:
            pairs.add((match[1], match[2]))
    return sorted(pairs, key=lambda p: (p[0] != "torch", p[0], natural_key(p[1])))


def _latency_keys(columns: Iterable[str], side: str) -> list[tuple[str, str]]:
    pairs = set()
    for name in columns:
        match = re.match(rf"^{side}\.latency_ms\.([^.]+)\.([^.]+)\.median_ms$", name)
        if match and not _LATENCY_DIGIT.match(name):  # normalise_row added the bs<N> form
            pairs.add((match[1], match[2]))
    return sorted(pairs, key=lambda p: (p[0] != "torch", p[0], natural_key(p[1])))


def _timing_keys(columns: Iterable[str]) -> list[str]:
    names = {c.split(".", 1)[1] for c in columns if re.match(r"^timings_s\.[^.]+$", c)}
    return [n for n in _TIMING_ORDER if n in names] + sorted(names.difference(_TIMING_ORDER))


def _distinct(rows: Iterable[Mapping[str, Any]], column: str) -> list[Any]:
    values: dict[Any, None] = {}
    for row in rows:
        values.setdefault(row.get(column))
    return list(values)


def _varying(groups: Sequence[Mapping[str, Any]]) -> list[str]:
    """Group fields other than criterion and ratio that differ between the pruned groups."""
    fields = ("scope", "target", "classes", "retrain_epochs")
    return [f for f in fields if len({g[f] for g in groups}) > 1]


_FIELD_TITLES = {
    "scope": "Scope",
    "target": "Target",
    "classes": "Classes",
    "retrain_epochs": "Retrain epochs",
}


def render_report(rows: Sequence[Mapping[str, Any]], plots: Sequence[str] = ()) -> str:
    """Render the Markdown report of a sweep.

    Args:
        rows: Rows as read by :func:`read_results_csv`.
        plots: File names of plots (relative to the report) to embed at the end.

    Returns:
        The Markdown text: overview, baseline, one table per criterion (ratio, realised MACs and
        parameter reduction, size, theoretical and measured speed-ups, accuracy before and
        after, mean ± sample standard deviation over seeds), preparation overhead and failed
        points.
    """
    rows = [normalise_row(row) for row in rows]
    columns: set[str] = set()
    for row in rows:
        columns.update(row)
    summary = summarise(rows)
    ok_rows = [row for row in rows if is_ok(row)]
    failed_rows = [row for row in rows if not is_ok(row)]
    baseline = [g for g in summary if g["strategy"] is None and g["count"]]
    pruned = [g for g in summary if g["strategy"] is not None]
    backends = _backends(columns)
    timings = _timing_keys(columns)
    varying = _varying(pruned)

    from capl.sweep.answer import render_answer  # imports this module's formatters

    out = ["# capl sweep report", ""]
    out += render_answer(summary, rows)
    out += ["## Sweep", ""]
    models = [m for m in _distinct(rows, "model") if m is not None]
    datasets = [d for d in _distinct(rows, "dataset") if d is not None]
    classes = [c for c in _distinct(rows, "classes.indices") if c is not None]
    names = [n for n in _distinct(ok_rows, "classes.names") if n is not None]
    seeds = sorted({r.get("seed") for r in rows if r.get("seed") is not None})
    criteria = [s for s in _distinct(rows, "strategy.name") if s is not None]
    out.append(
        f"- Model: {', '.join(map(str, models)) or _NA}; "
        f"dataset: {', '.join(map(str, datasets)) or _NA}"
    )
    if len(classes) == 1:
        label = ""
        if len(names) == 1 and names[0] != classes[0]:
            label = f" ({names[0].replace(';', ', ')})"
        out.append(f"- Classes: {str(classes[0]).replace(';', ', ')}{label}")
    elif classes:
        subsets = "; ".join("[" + str(c).replace(";", ", ") + "]" for c in classes)
        out.append(f"- Class subsets: {subsets}")
    out.append(f"- Criteria: {', '.join(map(str, criteria)) or _NA}")
    for field in ("scope", "target", "retrain_epochs"):
        if field not in varying and pruned:
            out.append(f"- {_FIELD_TITLES[field]}: {_cell_text(pruned[0][field])}")
    out.append(f"- Seeds: {', '.join(map(str, seeds)) or _NA}")
    out.append(f"- Grid points: {len(rows)} ({len(ok_rows)} ok, {len(failed_rows)} failed)")
    env = ok_rows[0] if ok_rows else {}
    env_parts = [
        f"{label} {env[key]}"
        for key, label in (
            ("environment.device", "device"),
            ("environment.torch", "torch"),
            ("environment.threads", "threads"),
            ("environment.onnxruntime_threads", "onnxruntime threads"),
        )
        if env.get(key) is not None
    ]
    if env_parts:
        out.append(f"- Environment: {', '.join(env_parts)}")
    out += [
        "",
        "Values are mean ± sample standard deviation over seeds (no ± for a single run). "
        "Accuracies are on the selected classes (same k-way task before and after pruning); "
        "speed-ups are base latency / pruned latency (median); selection time is averaged "
        "over the runs that computed their scores (not those that reused cached scores). "
        f"{_BUSY_MARK} marks a latency or speed-up timed while the machine was busy (its "
        "rounds' medians or its p90 spread too far; see benchmark.json's busy flags).",
        "",
    ]

    out += ["## Baseline (unpruned)", ""]
    if baseline:
        header = ["Classes", "Runs", "Accuracy (%)", "Macro acc. (%)", "MACs", "Params", "Size"]
        lat = _latency_keys(columns, "after")
        header += [f"Latency {b} {bs} (ms)" for b, bs in lat]
        body = []
        for g in baseline:
            line = [
                str(g["classes"]).replace(";", ", ") if g["classes"] is not None else _NA,
                str(g["count"]),
                format_percent(*_stat_of(g, "after.accuracy")),
                format_percent(*_stat_of(g, "after.accuracy_macro")),
                _format_count(*_stat_of(g, "after.macs")),
                _format_count(*_stat_of(g, "after.params")),
                format_bytes(*_stat_of(g, "after.size_bytes")),
            ]
            line += [
                _mark_busy(
                    _format_seconds(*_stat_of(g, f"after.latency_ms.{b}.{bs}.median_ms")), g, b, bs
                )
                for b, bs in lat
            ]
            body.append(line)
        out += [_table(header, body), ""]
    else:
        out += ["No unpruned run in this sweep; the 'Acc. before' column is the base model.", ""]

    for criterion in criteria:
        groups = [g for g in pruned if g["strategy"] == criterion]
        out += [f"## {criterion}", ""]
        header = [_FIELD_TITLES[f] for f in varying] + [
            "Ratio",
            "Runs",
            "MACs removed (%)",
            "Params removed (%)",
            "Non-zero params removed (%)",
            "Size",
            "Theoretical speed-up",
        ]
        header += [f"Measured {b} {bs}" for b, bs in backends]
        header += ["Acc. before (%)", "Acc. after (%)", "Δ acc. (pp)", "Failed"]
        body = []
        for g in groups:
            before, _ = _stat_of(g, "before.accuracy")
            after, after_std = _stat_of(g, "after.accuracy")
            delta = None if before is None or after is None else after - before
            line = [_cell_text(g[f]).replace(";", ", ") for f in varying] + [
                _format_ratio(g["ratio"]),
                str(g["count"]),
                format_percent(*_stat_of(g, "realised.macs_removed"), digits=1),
                format_percent(*_stat_of(g, "realised.params_removed"), digits=1),
                format_percent(*_stat_of(g, "realised.nonzero_params_removed"), digits=1),
                format_bytes(*_stat_of(g, "after.size_bytes")),
                format_speedup(*_stat_of(g, "realised.theoretical_speedup")),
            ]
            line += [
                _mark_busy(
                    format_speedup(*_stat_of(g, f"realised.measured_speedup.{b}.{bs}")), g, b, bs
                )
                for b, bs in backends
            ]
            line += [
                format_percent(*_stat_of(g, "before.accuracy")),
                format_percent(after, after_std),
                _NA if delta is None else f"{100 * delta:+.2f}",
                str(g["failed"]),
            ]
            body.append(line)
        out += [_table(header, body), ""]

    if timings and pruned:
        out += ["## Preparation overhead (seconds)", ""]
        header = ["Criterion"] + [_FIELD_TITLES[f] for f in varying] + ["Ratio"]
        header += [name.capitalize() for name in timings]
        body = []
        for g in pruned:
            if not g["count"]:
                continue
            line = [str(g["strategy"])] + [_cell_text(g[f]).replace(";", ", ") for f in varying]
            line.append(_format_ratio(g["ratio"]))
            line += [_format_seconds(*_stat_of(g, f"timings_s.{name}")) for name in timings]
            body.append(line)
        out += [_table(header, body), ""]

    out += ["## Failed points", ""]
    if failed_rows:
        body = []
        for row in failed_rows:
            error = str(row.get("error") or "unknown error").strip().splitlines()
            message = error[-1] if error else "unknown error"
            body.append(
                [
                    _cell_text(row.get("point_id")),
                    _cell_text(row.get("strategy.name") or "baseline"),
                    _format_ratio(row.get("ratio")),
                    _cell_text(row.get("seed")),
                    message[:300],
                ]
            )
        out += [_table(["Point", "Criterion", "Ratio", "Seed", "Error"], body), ""]
    else:
        out += ["None.", ""]

    if plots:
        out += ["## Plots", ""]
        for name in plots:
            title = Path(name).stem.replace("_", " ")
            out += [f"![{title}]({name})", ""]
    return "\n".join(out).rstrip() + "\n"


# --------------------------------------------------------------------------------------------
# Files and CLI


def write_report(folder: str | Path, plots: bool = True) -> list[Path]:
    """Regenerate ``report.md``, ``summary.csv`` and the plots from ``FOLDER/results.csv``.

    Args:
        folder: A sweep output folder holding ``results.csv``.
        plots: Whether to draw the PNG plots.

    Returns:
        The written files: plots first, then ``summary.csv`` and ``report.md``.

    Raises:
        FileNotFoundError: ``folder`` or its ``results.csv`` does not exist.
        ValueError: ``results.csv`` holds no rows.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"sweep folder {str(folder)!r} does not exist; expected a capl-sweep output folder "
            f"holding {RESULTS_CSV}"
        )
    csv_path = folder / RESULTS_CSV
    if not csv_path.is_file():
        raise FileNotFoundError(
            f"{str(csv_path)!r} not found; expected the {RESULTS_CSV} that capl-sweep writes "
            "(run capl-sweep --merge first)"
        )
    rows = read_results_csv(csv_path)
    if not rows:
        raise ValueError(
            f"{str(csv_path)!r} holds no rows; expected one row per grid point (header plus rows)"
        )
    summary = summarise(rows)
    written: list[Path] = []
    if plots:
        from capl.sweep import plots as plotting  # matplotlib only when drawing

        written += plotting.plot_all(summary, folder)
    written.append(write_results_summary(summary, folder / SUMMARY_CSV))
    report = render_report(rows, plots=[p.name for p in written if p.suffix == ".png"])
    written.append(write_text_atomic(folder / REPORT_MD, report))
    log.info("wrote %d files to %s", len(written), folder)
    return written


def write_results_summary(summary: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Write :func:`summarise`'s groups as a CSV (one row per configuration)."""
    return write_results_csv(summary_rows(summary), path)
