"""A sweep folder's records: each point's ``result.json``, and the rows collected from them.

A point is *finished* when its ``result.json`` exists with ``status: ok``. Paths inside records
are stored relative to the sweep folder (:func:`to_record`), so a copied or moved folder still
finds its own files. ``results.csv`` and the report are rebuilt from the records of the current
grid (:func:`write_outputs`), so a rerun neither loses nor duplicates rows.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from capl.sweep.grid import Point
from capl.sweep.report import RESULTS_CSV, result_row, write_report, write_results_csv
from capl.sweep.spec import SweepConfig

__all__ = [
    "BENCHMARK_FILE",
    "RESULT_FILE",
    "TRACEBACK_FILE",
    "collect_rows",
    "from_record",
    "now",
    "read_record",
    "record_file",
    "to_record",
    "write_outputs",
]

log = logging.getLogger(__name__)

RESULT_FILE = "result.json"
BENCHMARK_FILE = "benchmark.json"
TRACEBACK_FILE = "traceback.txt"


def now() -> str:
    """The current UTC time as records store it (ISO 8601, seconds)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def to_record(output: str | Path, path: str | Path) -> str:
    """``path`` as a record stores it: relative to the sweep folder when inside it.

    A copied or moved sweep folder then still finds its own files (never the original's).
    """
    path = Path(path).resolve()
    root = Path(output).resolve()
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)


def from_record(output: str | Path, stored: str) -> Path:
    """A path read from a record: relative ones are inside the sweep folder."""
    path = Path(stored)
    return path if path.is_absolute() else Path(output).resolve() / path


def record_file(output: str | Path, point: Point, record: dict[str, Any]) -> Path:
    """The ``benchmark.json`` a point's record names, found in this sweep folder.

    Records of older capl versions hold absolute paths; when the folder was copied or moved,
    the point's own file in this folder is read, not the one at the old location.
    """
    stored = record["benchmark_path"]
    own = Path(output).resolve() / "points" / point.point_id / BENCHMARK_FILE
    if Path(stored).is_absolute() and Path(stored).parts[-3:] == own.parts[-3:]:
        return own
    return from_record(output, stored)


def read_record(output: str | Path, point_id: str) -> dict[str, Any] | None:
    """A point's ``result.json``, or ``None`` when it has not finished (or the file is bad)."""
    path = Path(output) / "points" / point_id / RESULT_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _row(
    config: SweepConfig, point: Point, record: dict[str, Any], output: str | Path
) -> dict[str, Any]:
    """The ``results.csv`` row of a recorded point (failed, or ok with its benchmark.json)."""
    extra = {
        "index": point.index,
        "duration_s": record.get("duration_s"),
        "benchmark_path": record.get("benchmark_path"),
        "scores_cached": record.get("scores_cached"),
    }
    settings = point.settings(config.base.network)
    if record.get("status") != "ok":
        error = record.get("error") or "failed"
        return result_row(point.point_id, None, error=error, point=settings, **extra)
    try:
        benchmark = json.loads(record_file(output, point, record).read_text())
    except (OSError, json.JSONDecodeError, TypeError, KeyError) as err:
        error = f"benchmark.json unreadable: {err}"
        return result_row(point.point_id, None, error=error, point=settings, **extra)
    row = result_row(point.point_id, benchmark, point=settings, **extra)
    # the report groups by the grid's budget; benchmark.json has what was trained
    row["retrain_epochs_trained"] = row.get("retrain_epochs")
    row["retrain_epochs"] = point.retrain_epochs
    return row


def collect_rows(
    config: SweepConfig, points: Sequence[Point], output: str | Path
) -> tuple[list[dict[str, Any]], list[str]]:
    """One ``results.csv`` row per recorded point, in grid order; and the unrecorded ids.

    A successful row is :func:`capl.sweep.report.result_row` of the point's ``benchmark.json``
    (so it holds exactly that file's values) plus bookkeeping columns (index, duration_s,
    benchmark_path, scores_cached).
    """
    rows: list[dict[str, Any]] = []
    pending: list[str] = []
    for point in points:
        record = read_record(output, point.point_id)
        if record is None:
            pending.append(point.point_id)
        else:
            rows.append(_row(config, point, record, output))
    return rows, pending


def write_outputs(
    config: SweepConfig, points: Sequence[Point], output: str | Path, plots: bool = True
) -> int:
    """(Re)write ``results.csv``, ``report.md``, ``summary.csv`` and plots from the records.

    Returns:
        The number of rows written.
    """
    rows, pending = collect_rows(config, points, output)
    if pending:
        log.warning(
            "%d of %d points have no record yet (not run or interrupted), e.g. %s",
            len(pending),
            len(points),
            pending[0],
        )
    if not rows:
        log.warning("no finished points: results.csv not written")
        return 0
    write_results_csv(rows, Path(output) / RESULTS_CSV)
    write_report(output, plots=plots)
    return len(rows)
