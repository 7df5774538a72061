"""Rows of ``results.csv``: one ``benchmark.json`` flattened per grid point, and the CSV file.

A sweep writes one ``benchmark.json`` per grid point (schema in ``docs/ARCHITECTURE.md``). The
runner turns each into a flat row with :func:`result_row` (or :func:`flatten`), appends its
bookkeeping columns and stores them all with :func:`write_results_csv`. Everything after that
works from ``results.csv`` alone (:func:`read_results_csv`).

CSV conventions:

* Nested keys are joined with ``"."`` (``after.accuracy``,
  ``realised.measured_speedup.torch.bs1``, ``per_layer.layer1.0.conv1.after``); the paths are
  those of :mod:`capl.benchmark.record`.
* Lists become ``";"``-joined strings (``classes.indices = "3;5;7"``).
* An unpruned (baseline) run has ``criterion.name`` empty. Records and rows of earlier capl
  releases name the criterion ``strategy``: :func:`flatten` and :func:`normalise_row` read them
  as ``criterion``.
* Bookkeeping columns (:data:`BOOKKEEPING_COLUMNS`) come first, then all other columns in natural
  sort order, then the ``per_layer.*`` columns in network order (as ``benchmark.json`` lists
  them); ``status`` is ``"ok"`` or ``"failed"`` and ``error`` holds a failed point's message.
* Empty cells read back as ``None``; numbers as ``int`` / ``float``; ``True`` / ``False`` as bool.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from capl.benchmark.record import (
    CRITERION,
    CRITERION_NAME,
    LEGACY_CRITERION,
    criterion_of,
    latency_key,
    per_layer_key,
)
from capl.io import write_text_atomic

__all__ = [
    "BOOKKEEPING_COLUMNS",
    "RESULTS_CSV",
    "Scalar",
    "flatten",
    "is_ok",
    "natural_key",
    "normalise_row",
    "read_results_csv",
    "result_row",
    "write_results_csv",
]

Scalar = str | int | float | bool | None

RESULTS_CSV = "results.csv"

#: Sweep bookkeeping columns, written first and in this order when present.
BOOKKEEPING_COLUMNS: tuple[str, ...] = (
    "point_id",
    "index",
    "status",
    "error",
    "duration_s",
    "benchmark_path",
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
        CRITERION_NAME,
        f"{LEGACY_CRITERION}.name",
        "scope",
        "target",
    }
)
_STRING_PREFIXES = ("run.", "environment.")  # free text, except plain integers
_STRING_SUFFIXES = (".peak_memory_method", ".kind")
_SKIPPED_PREFIXES = ("before.layers.", "after.layers.")

_SPEEDUP_NESTED = re.compile(r"^realised\.speedup\.([^.]+)\.([^.]+)\.(measured|efficiency)$")
#: A latency column with a bare batch key (``after.latency_ms.torch.32.median_ms``).
LATENCY_DIGIT = re.compile(r"^(before|after)\.latency_ms\.([^.]+)\.(\d+)\.median_ms$")
_LAYER_CHANNELS = re.compile(
    r"^per_layer\.(?P<layer>.+)\.(?P<live>live_)?out_channels_(?P<side>before|after)$"
)
_LEGACY_PREFIX = f"{LEGACY_CRITERION}."


def flatten(benchmark: Mapping[str, Any], sep: str = ".") -> dict[str, Scalar]:
    """Flatten one ``benchmark.json`` dict into a CSV row.

    Nested keys are joined with ``sep``; lists of scalars become ``";"``-joined strings; a
    ``null`` criterion (unpruned run) becomes ``criterion.name = None`` so that every row has the
    column the report groups by; a record of an earlier release (``strategy``) is read as
    ``criterion``. The model blocks' raw layer tables (``before.layers``, ``after.layers``) are
    left out: ``per_layer`` holds their comparison, and the ``benchmark.json`` next to each
    point keeps the full record.

    Args:
        benchmark: The parsed ``benchmark.json``.
        sep: Separator for nested keys.

    Returns:
        A flat mapping from column name to scalar.
    """
    record = {k: v for k, v in benchmark.items() if k != LEGACY_CRITERION}
    named = CRITERION in benchmark or LEGACY_CRITERION in benchmark
    if named:
        record[CRITERION] = criterion_of(benchmark)
    row: dict[str, Scalar] = {}
    _flatten_into(row, "", record, sep)
    for key in [k for k in row if k.startswith(_SKIPPED_PREFIXES)]:
        del row[key]
    criterion = record.get(CRITERION)
    if named and (criterion is None or isinstance(criterion, str)):  # unpruned, or a bare name
        row.pop(CRITERION, None)
        row[f"{CRITERION}{sep}name"] = criterion
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
        point: The grid point's settings in ``benchmark.json`` shape (``{"criterion": {"name":
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


def _batch_label(batch: str) -> str:
    return f"bs{batch}" if batch.isdigit() else batch


def _canonical_metric(key: str) -> str | None:
    """The contract's name of a metric column a row spells differently, else ``None``."""
    if key.startswith(_LEGACY_PREFIX):
        return f"{CRITERION}.{key[len(_LEGACY_PREFIX) :]}"
    match = _SPEEDUP_NESTED.match(key)
    if match:
        backend, batch, field = match.groups()
        name = "measured_speedup" if field == "measured" else "efficiency"
        return f"realised.{name}.{backend}.{_batch_label(batch)}"
    match = LATENCY_DIGIT.match(key)
    if match:
        side, backend, batch = match.groups()
        return latency_key(side, backend, _batch_label(batch))
    return None


def normalise_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """Add the canonical metric columns the report reads, where a row spells them differently.

    The architecture contract names ``criterion.*``, ``realised.measured_speedup.<backend>.
    bs<N>``, ``<side>.latency_ms.<backend>.bs<N>.median_ms`` and ``per_layer.<layer>.before|
    after``; rows of earlier releases write ``strategy.*``, and benchmark code may also write
    ``realised.speedup.<backend>.<N>.measured|efficiency``, batch keys without the ``bs``
    prefix and ``per_layer.<layer>.[live_]out_channels_before|after`` (live channels
    preferred: masked filters count as removed). Existing canonical values are never
    overwritten.

    Args:
        row: One flat row.

    Returns:
        A new row with the canonical columns added.
    """
    out = dict(row)
    live_layers = set()
    for key, value in row.items():
        canonical = _canonical_metric(key)
        if canonical is not None:
            out.setdefault(canonical, value)
            continue
        match = _LAYER_CHANNELS.match(key)
        if match and match["live"]:
            live_layers.add(match["layer"])
    for key, value in row.items():
        match = _LAYER_CHANNELS.match(key)
        if match and (match["live"] or match["layer"] not in live_layers):
            out.setdefault(per_layer_key(match["layer"], match["side"]), value)
            out.setdefault(per_layer_key(match["layer"], "kind"), "channels")
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
