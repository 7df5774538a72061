"""Run a sweep: every grid point through the same Lightning path as a single ``capl`` run.

Output folder layout (``DIR``)::

    DIR/sweep.json                  the sweep's settings fingerprint (one sweep per folder)
    DIR/base/<hash>/                the base model trained by the sweep (base.json marks it done)
    DIR/scores/                     PruningCallback score cache, shared by all points
    DIR/latency/                    latency tables of target: latency points (unless
                                    pruning.latency.cache names a folder), shared
    DIR/base_bench/<key>/           the base model's benchmark block and ONNX export, measured
                                    once for every point with the same base/classes/settings
    DIR/points/<point_id>/          config.yaml (and test.yaml after retraining), benchmark.json,
                                    checkpoints/, traceback.txt of a failure, result.json (last)
    DIR/tb/<point_id>/              TensorBoard logs (the fit of a retraining point in .../fit)
    DIR/results.csv, report.md, summary.csv, *.png

A point is *finished* when its ``result.json`` exists with ``status: ok``. The record is written
atomically after everything else, so an interrupted point has none and runs again; a failed one
has ``status: failed`` (message in the record, traceback next to it) and is retried on the next
run. A serial sweep times the pruned models of a group of points (same base, class subset and
benchmark settings) in one interleaved run against the base (:mod:`capl.sweep.sharing`) and
writes their records only after it. ``results.csv`` is rebuilt from the records of the current
grid after every run, so a rerun neither loses nor duplicates rows.

The parts live in their own modules: :mod:`capl.sweep.base` (the base model, trained once under
a lock), :mod:`capl.sweep.points` (a point's config and run), :mod:`capl.sweep.records`
(``result.json`` files and the rows collected from them) and :mod:`capl.sweep.launch` (the
``capl`` CLI in-process). This module runs the loop; the old names are importable from it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from capl.errors import ConfigError
from capl.io import write_json_atomic
from capl.sweep import preflight
from capl.sweep.base import BASE_DONE, base_checkpoint, base_folder
from capl.sweep.grid import Point, Skipped, SweepConfig, expand_grid
from capl.sweep.launch import run_capl as _capl  # noqa: F401 (its old name, used by tests)
from capl.sweep.points import (
    PendingPoint,
    PointResult,
    long_lived_objects_frozen,
    point_config,
    run_point,
)
from capl.sweep.records import (
    BENCHMARK_FILE,
    RESULT_FILE,
    TRACEBACK_FILE,
    collect_rows,
    from_record,
    now,
    read_record,
    record_file,
    to_record,
    write_outputs,
)
from capl.sweep.sharing import LatencyGroup
from capl.sweep.signals import stops_on_sigterm

__all__ = [
    "BASE_DONE",
    "BENCHMARK_FILE",
    "RESULT_FILE",
    "SWEEP_FILE",
    "TRACEBACK_FILE",
    "PointResult",
    "SweepRun",
    "base_checkpoint",
    "collect_rows",
    "describe",
    "from_record",
    "point_config",
    "read_record",
    "record_file",
    "run_point",
    "run_sweep",
    "to_record",
    "write_outputs",
]

log = logging.getLogger(__name__)

SWEEP_FILE = "sweep.json"


@dataclass
class SweepRun:
    """What one ``run_sweep`` call did."""

    points: list[Point]
    skipped: list[Skipped]
    ran: list[PointResult] = field(default_factory=list)
    already_done: list[str] = field(default_factory=list)
    rows: int = 0
    base_seconds: float = 0.0
    seconds: float = 0.0

    @property
    def failed(self) -> list[PointResult]:
        """Points that failed in this run."""
        return [r for r in self.ran if r.status != "ok"]


# --------------------------------------------------------------------------------------------
# Checks before anything runs


def _check_before_run(
    config: SweepConfig, todo: Sequence[Point], output: Path, force: bool
) -> None:
    """Fail the whole run at once, before anything is written, on what would fail every point."""
    sections = {"trainer": config.trainer, "retrain.trainer": config.retrain.trainer}
    if config.base.train is not None:
        sections["base.train.trainer"] = config.base.train.trainer
    preflight.check_confined(sections, output)
    pending = [
        p for p in todo if force or (read_record(output, p.point_id) or {}).get("status") != "ok"
    ]
    base = config.base
    trains_base = (
        base.checkpoint is None and not (base_folder(config, output) / BASE_DONE).is_file()
    )
    if base.checkpoint is not None and pending:
        preflight.check_base(
            base.network, base.num_classes, base.small_input, base.checkpoint, base.trust_weights
        )
    if trains_base:
        assert base.train is not None
        train_data = {**config.data, "init_args": {**config.data["init_args"], **base.train.data}}
        preflight.check_data(train_data, [train_data["init_args"].get("classes")], base.train.seed)
    if pending:
        preflight.check_data(config.data, [p.classes for p in pending], pending[0].seed)


def _check_folder(config: SweepConfig, output: Path) -> None:
    marker = output / SWEEP_FILE
    fingerprint = config.fingerprint()
    if marker.is_file():
        saved = json.loads(marker.read_text()).get("fingerprint")
        if saved != fingerprint:
            raise ConfigError(
                f"{output} holds a sweep with other base/data/pruning/retrain/benchmark/trainer "
                "settings: use a new --output folder (grid lists may change freely)"
            )
        return
    write_json_atomic(marker, {"fingerprint": fingerprint, "name": config.name, "created": now()})


# --------------------------------------------------------------------------------------------
# The loop


def _select(run: SweepRun, chosen: Sequence[Point], output: Path, force: bool) -> list[Point]:
    """The chosen points still to run; finished ones go to ``run.already_done``."""
    todo = []
    for point in chosen:
        record = read_record(output, point.point_id)
        if record is not None and record.get("status") == "ok" and not force:
            run.already_done.append(point.point_id)
        else:
            todo.append(point)
    return todo


def _defers_latency(config: SweepConfig, index: int | None) -> bool:
    """Whether points leave latency to a group run: a serial sweep, unless ``latency: paired``."""
    return index is None and config.benchmark.get("latency") != "paired"


def _group_order(points: Sequence[Point]) -> list[Point]:
    """Points of one class subset and seed next to each other (grid order otherwise)."""
    return sorted(points, key=lambda p: json.dumps([p.classes, p.seed], default=str))


def _run_points(
    run: SweepRun,
    config: SweepConfig,
    todo: Sequence[Point],
    base: str,
    output: Path,
    index: int | None,
) -> None:
    """Run ``todo``, logging progress and the time left; latency groups timed as they close.

    On an interruption the points already pruned are timed and recorded before the sweep stops
    (a second interruption abandons them; they run again next time).
    """
    defer = _defers_latency(config, index)
    group = LatencyGroup()
    loop_start = time.perf_counter()
    try:
        for done, point in enumerate(_group_order(todo) if defer else todo):
            where = f"{done + 1}/{len(todo)}"
            if index is not None:
                where = f"{index + 1} of {len(run.points)}"
            elapsed = time.perf_counter() - loop_start
            log.info(
                "sweep point %s: %s (%s)",
                where,
                point.point_id,
                _progress(done, len(todo), elapsed),
            )
            outcome = run_point(config, point, base, output, defer_latency=defer)
            if isinstance(outcome, PendingPoint):
                run.ran += group.add(outcome)
            else:
                run.ran.append(outcome)
    except KeyboardInterrupt:
        if group.pending:
            log.warning(
                "interrupted: timing the %d point(s) already pruned before stopping "
                "(interrupt again to abandon them; they rerun next time)",
                len(group.pending),
            )
            run.ran += group.flush()
        raise
    run.ran += group.flush()
    run.ran.sort(key=lambda result: result.index)


@stops_on_sigterm
def run_sweep(
    config: SweepConfig,
    output: str | Path,
    *,
    index: int | None = None,
    merge: bool = False,
    base_only: bool = False,
    plots: bool = True,
    force: bool = False,
) -> SweepRun:
    """Run (or resume) a sweep, one point, or only the merge.

    Args:
        config: The validated sweep.
        output: The sweep folder.
        index: Run only this point (SLURM array task); results.csv is not written.
        merge: Only collect the point records into results.csv, report.md and plots.
        base_only: Only make sure the base model exists (train it if needed).
        plots: Draw the report's plots.
        force: Rerun points that already finished.

    Returns:
        What was run and found.

    Raises:
        ConfigError: An index out of range, or a folder holding another sweep; an unwritable
            output, trainer settings writing outside it, a bad base checkpoint or data
            settings (checked once, before the first point; nothing is written then).
        Interrupted: SIGTERM or Ctrl-C (``KeyboardInterrupt``); the running point has no
            record, so a rerun does it again.
    """
    output = Path(output).resolve()
    points, skipped = expand_grid(config)
    if index is not None and not merge and not 0 <= index < len(points):
        raise ConfigError(
            f"--index {index} is out of range: this sweep has {len(points)} points "
            f"(0..{len(points) - 1})"
        )
    run = SweepRun(points=points, skipped=skipped)
    start = time.perf_counter()
    chosen = points if index is None else [points[index]]
    preflight.prepare_output(output)
    if not merge:
        _check_before_run(config, chosen, output, force)
    output.mkdir(parents=True, exist_ok=True)
    _check_folder(config, output)
    if merge:
        run.rows = write_outputs(config, points, output, plots)
    else:
        base_start = time.perf_counter()
        base = base_checkpoint(config, output)
        run.base_seconds = time.perf_counter() - base_start
        if not base_only:
            with long_lived_objects_frozen():  # each point's own gc.collect() stays cheap
                _run_points(run, config, _select(run, chosen, output, force), base, output, index)
            if index is None:
                run.rows = write_outputs(config, points, output, plots)
    run.seconds = time.perf_counter() - start
    return run


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _progress(done: int, total: int, elapsed: float) -> str:
    """``elapsed 1m05s, about 3m10s left`` (mean time of the points done so far)."""
    if done == 0:
        return "elapsed 0m00s"
    left = elapsed / done * (total - done)
    return f"elapsed {_duration(elapsed)}, about {_duration(left)} left"


def describe(run: SweepRun, output: str | Path | None = None) -> str:
    """Lines listing the points (index, id, done/failed/pending) and the skipped combinations."""
    lines = [f"{len(run.points)} points"]
    for point in run.points:
        state = ""
        if output is not None:
            record = read_record(output, point.point_id)
            state = "pending" if record is None else str(record.get("status"))
        lines.append(f"{point.index:4d}  {point.point_id}  {state}".rstrip())
    if run.skipped:
        lines.append(f"{len(run.skipped)} combinations skipped:")
        lines += [f"      {s.point_id}: {s.reason}" for s in run.skipped]
    return "\n".join(lines)
