"""Latency groups: the sweep's pruned models timed together against their base model.

A sweep point runs ``capl`` with ``BenchmarkCallback(latency="deferred")``: its
``benchmark.json`` is written with everything but latency, and the point comes back as a
:class:`~capl.sweep.points.PendingPoint` holding the callback's
:class:`~capl.benchmark.group.LatencyJob`.
:class:`LatencyGroup` collects the pending points of one key (same base model, class subset,
data and benchmark settings) and, when the key changes, the group is full or the sweep ends,
times them all in one interleaved run against the base (:func:`capl.benchmark.group.time_jobs`),
completes each ``benchmark.json`` and only then writes each point's ``result.json``. A point is
therefore finished only once its latency is in: a kill during the group run leaves the group's
points unrecorded and the next run prunes and times them again.
"""

from __future__ import annotations

import logging
import time
import traceback
from dataclasses import asdict

from capl.benchmark.group import time_jobs
from capl.io import write_json_atomic, write_text_atomic
from capl.sweep.points import PendingPoint, PointResult
from capl.sweep.records import RESULT_FILE, TRACEBACK_FILE, now

__all__ = ["GROUP_SIZE", "LatencyGroup"]

log = logging.getLogger(__name__)

GROUP_SIZE = 12
"""Pruned models per interleaved run at most (each run also times the base once). Twelve hold an
11-ratio grid of one criterion; larger groups would keep more models in memory and make every
model wait longer between its rounds."""


class LatencyGroup:
    """Pending points of one key, timed together when the key changes or the group is full.

    Args:
        size: Pruned models per interleaved run at most.
    """

    def __init__(self, size: int = GROUP_SIZE) -> None:
        if size < 1:
            raise ValueError(f"a latency group holds at least one model, got {size}")
        self.size = size
        self.pending: list[PendingPoint] = []

    def add(self, point: PendingPoint) -> list[PointResult]:
        """Add a pending point; returns the records of a group this closed (else none)."""
        done = []
        if self.pending and self.pending[0].job.key != point.job.key:
            done = self.flush()
        if self.pending:
            point.job.base = None  # the group's first job carries the base model for all
        self.pending.append(point)
        if len(self.pending) >= self.size:
            done += self.flush()
        return done

    def flush(self) -> list[PointResult]:
        """Time the pending points against their base, complete and record them.

        A failure of the group run records every point of the group as failed (retried by the
        next run). ``KeyboardInterrupt`` (Ctrl-C, SIGTERM) records nothing: those points run
        again.

        Returns:
            The points' records, as written to their ``result.json``.
        """
        points, self.pending = self.pending, []
        if not points:
            return []
        start = time.perf_counter()
        error = None
        try:
            time_jobs([p.job for p in points])
        except Exception as err:
            error = f"latency group run failed: {type(err).__name__}: {err}"
            error = " ".join(error.split())
            log.error("%s (%d points recorded as failed)", error, len(points))
            for point in points:
                write_text_atomic(point.folder / TRACEBACK_FILE, traceback.format_exc())
        share = (time.perf_counter() - start) / len(points)
        records = []
        for point in points:
            result = point.result
            result.duration_s = round(result.duration_s + share, 3)
            result.finished = now()
            if error is not None:
                result.status, result.error, result.benchmark_path = "failed", error, None
            write_json_atomic(point.folder / RESULT_FILE, asdict(result))
            records.append(result)
        return records
