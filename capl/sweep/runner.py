"""Run a sweep: every grid point through the same Lightning path as a single ``capl`` run.

Output folder layout (``DIR``)::

    DIR/sweep.json                  the sweep's settings fingerprint (one sweep per folder)
    DIR/base/<hash>/                the base model trained by the sweep (base.json marks it done)
    DIR/scores/                     PruningCallback score cache, shared by all points
    DIR/points/<point_id>/          config.yaml (and test.yaml after retraining), benchmark.json,
                                    checkpoints/, traceback.txt of a failure, result.json (last)
    DIR/tb/<point_id>/              TensorBoard logs (the fit of a retraining point in .../fit)
    DIR/results.csv, report.md, summary.csv, *.png

A point is *finished* when its ``result.json`` exists with ``status: ok``. The record is written
atomically after everything else, so an interrupted point has none and runs again; a failed one
has ``status: failed`` (message in the record, traceback next to it) and is retried on the next
run. ``results.csv`` is rebuilt from the records of the current grid after every run, so a rerun
neither loses nor duplicates rows.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import io
import json
import logging
import shutil
import signal
import sys
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from capl.errors import ConfigError
from capl.io import write_json_atomic, write_text_atomic
from capl.sweep import preflight
from capl.sweep.grid import Point, Skipped, SweepConfig, expand_grid, stable_hash
from capl.sweep.report import RESULTS_CSV, result_row, write_report, write_results_csv
from capl.sweep.signals import Interrupted, stops_on_sigterm

__all__ = [
    "PointResult",
    "SweepRun",
    "base_checkpoint",
    "collect_rows",
    "point_config",
    "run_point",
    "run_sweep",
]

log = logging.getLogger(__name__)

RESULT_FILE = "result.json"
BENCHMARK_FILE = "benchmark.json"
TRACEBACK_FILE = "traceback.txt"
BASE_DONE = "base.json"
SWEEP_FILE = "sweep.json"


@dataclass
class PointResult:
    """The record of one finished or failed point (``points/<id>/result.json``)."""

    point_id: str
    index: int
    status: str
    error: str | None
    duration_s: float
    benchmark_path: str | None
    scores_cached: bool | None
    finished: str
    settings: dict[str, Any] = field(default_factory=dict)


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
# Running the capl CLI in-process


class _Tee(io.TextIOBase):
    """Write to a stream and keep a copy (the one-line user errors the CLI prints)."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.buffer_text = io.StringIO()

    def write(self, text: str) -> int:
        self.buffer_text.write(text)
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()


@contextlib.contextmanager
def _program_only_argv() -> Iterator[None]:
    saved = sys.argv
    sys.argv = saved[:1]
    try:
        yield
    finally:
        sys.argv = saved


def _capl(args: Sequence[str]) -> Any:
    """``capl.cli.main(args)``; a user error becomes a ConfigError carrying its message."""
    from capl.cli import main

    tee = _Tee(sys.stderr)
    try:
        # main(args) runs as if from the command line: sys.argv must not hold capl-sweep's own
        # arguments too (LightningCLI warns about that on every point)
        with contextlib.redirect_stderr(tee), _program_only_argv():
            return main(list(args))
    except SystemExit as err:
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        if isinstance(err.__context__, KeyboardInterrupt):
            # Lightning turns Ctrl-C (and SIGTERM, see capl.sweep.signals) into exit(1) and
            # ignores SIGINT from then on: restore the handler and stop the sweep instead of
            # recording the point as failed
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise err.__context__ from None
        if isinstance(err, SIGTERMException):  # Lightning's own SIGTERM handling
            raise Interrupted(signal.SIGTERM) from None
        if err.code in (0, None):
            raise RuntimeError(f"capl {args[0]} exited early without running") from None
        lines = [ln for ln in tee.buffer_text.getvalue().splitlines() if "error:" in ln]
        message = lines[-1].split("error:", 1)[1].strip() if lines else f"exit code {err.code}"
        raise ConfigError(message) from None


def _write_yaml(path: Path, config: dict[str, Any], header: str = "") -> Path:
    text = yaml.safe_dump(config, sort_keys=False, default_flow_style=False)
    return write_text_atomic(path, header + text)


def _logger(save_dir: Path, version: str) -> dict[str, Any]:
    # name="" and version=<point id>: every point is one run directly under DIR/tb, so
    # TensorBoard's HParams view lists the sweep's points side by side
    return {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {
            "save_dir": str(save_dir),
            "name": "",
            "version": version,
            "default_hp_metric": False,
        },
    }


def _trainer_defaults(config: SweepConfig) -> dict[str, Any]:
    trainer = {
        "accelerator": "cpu",
        "devices": 1,
        "deterministic": True,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        # metrics are logged per epoch: no "fewer batches than the logging interval" warning
        "log_every_n_steps": 1,
    }
    trainer.update(config.trainer)
    return trainer


# --------------------------------------------------------------------------------------------
# Base model


def _base_settings(config: SweepConfig) -> dict[str, Any]:
    base = asdict(config.base)
    base.pop("trust_weights")  # how the checkpoint is read, not which model is trained
    return {"base": base, "data": config.data, "trainer": config.trainer}


def _base_config(config: SweepConfig, folder: Path) -> dict[str, Any]:
    train = config.base.train
    assert train is not None
    model: dict[str, Any] = {
        "network": config.base.network,
        "small_input": config.base.small_input,
        "num_classes": config.base.num_classes,
    }
    if train.optimizer:
        model["optimizer"] = train.optimizer
    if train.lr_scheduler:
        model["lr_scheduler"] = train.lr_scheduler
    trainer = _trainer_defaults(config)
    trainer.update(
        max_epochs=train.max_epochs,
        logger=_logger(folder, "logs"),
        callbacks=[
            {
                "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                "init_args": {
                    "dirpath": str(folder / "checkpoints"),
                    "filename": "best",
                    "monitor": "val/acc",
                    "mode": "max",
                    "save_top_k": 1,
                },
            }
        ],
    )
    trainer.update(train.trainer)
    data = {
        "class_path": config.data["class_path"],
        "init_args": {**config.data["init_args"], "seed": train.seed, **train.data},
    }
    return {"seed_everything": train.seed, "data": data, "model": model, "trainer": trainer}


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def base_checkpoint(config: SweepConfig, output: str | Path, train: bool = True) -> str:
    """The base model's weights: the configured checkpoint, or the sweep's cached trained one.

    Without ``base.checkpoint`` the base model is trained once with ``capl fit`` into
    ``OUTPUT/base/<hash of the base settings>/`` under a file lock (parallel array tasks wait
    for the first one), and reused by every later run with the same settings.

    Args:
        config: The sweep.
        output: The sweep folder.
        train: Train the base model when it is missing (else raise).

    Raises:
        ConfigError: The base model is missing and ``train`` is false, or training failed.
    """
    if config.base.checkpoint is not None:
        path = Path(config.base.checkpoint)
        return str(path.resolve()) if path.is_file() else config.base.checkpoint
    folder = Path(output).resolve() / "base" / stable_hash(_base_settings(config))
    done = folder / BASE_DONE
    with _file_lock(folder.with_suffix(".lock")):
        if done.is_file():
            return str(from_record(output, json.loads(done.read_text())["checkpoint"]))
        if not train:
            raise ConfigError(
                f"base model not trained yet ({folder}): run capl-sweep without "
                "--index first, or with --base-only"
            )
        if folder.exists():  # an interrupted earlier attempt
            shutil.rmtree(folder)
        base_yaml = _write_yaml(
            folder / "config.yaml",
            _base_config(config, folder),
            "# The sweep's base model. Rerun by hand: capl fit --config <this file>\n",
        )
        log.info("training the base model (%s) into %s", config.base.network, folder)
        start = time.perf_counter()
        cli = _capl(["fit", "--config", str(base_yaml)])
        best = _best_checkpoint(cli, folder / "checkpoints")
        write_json_atomic(
            done,
            {
                "checkpoint": to_record(output, best),
                "settings": _base_settings(config),
                "seconds": time.perf_counter() - start,
                "created": _now(),
            },
        )
        return best


def _best_checkpoint(cli: Any, folder: Path) -> str:
    callback = getattr(getattr(cli, "trainer", None), "checkpoint_callback", None)
    best = getattr(callback, "best_model_path", "") if callback is not None else ""
    if best and Path(best).is_file():
        return str(Path(best).resolve())
    found = sorted(folder.glob("*.ckpt"))
    if not found:
        raise ConfigError(f"training wrote no checkpoint into {folder}")
    return str(found[0].resolve())


# --------------------------------------------------------------------------------------------
# Points


def point_config(
    config: SweepConfig, point: Point, base: str, output: str | Path, stage: str = "fit"
) -> dict[str, Any]:
    """The ``capl`` config (configs/runs/prune_test.yaml / prune_retrain.yaml format) of a point.

    Args:
        config: The sweep.
        point: The grid point.
        base: The base model's weights (path or torchvision weights name).
        output: The sweep folder.
        stage: ``fit`` (pruning, plus retraining when the point retrains) or ``test`` (the
            benchmark of a retrained checkpoint: no PruningCallback, the checkpoint carries the
            plan and the base weights).

    Returns:
        A plain dict, ready for YAML.
    """
    output = Path(output).resolve()
    folder = output / "points" / point.point_id
    retrain = point.retrain_epochs > 0
    init_args = {**config.data["init_args"], "seed": point.seed}
    if point.classes is not None or "classes" in init_args:
        init_args["classes"] = point.classes
    model: dict[str, Any] = {
        "network": config.base.network,
        "small_input": config.base.small_input,
        "num_classes": config.base.num_classes,
        "weights": base,
    }
    if config.base.trust_weights:
        model["trust_weights"] = True
    if retrain and config.retrain.optimizer:
        model["optimizer"] = config.retrain.optimizer
    if retrain and config.retrain.lr_scheduler:
        model["lr_scheduler"] = config.retrain.lr_scheduler
    pruning = {
        "class_path": "capl.callbacks.PruningCallback",
        "init_args": {
            **config.pruning,
            "criterion": {
                "class_path": point.criterion.class_path,
                "init_args": point.criterion_init_args(),
            },
            "ratio": point.ratio,
            "scope": point.scope,
            "target": point.target,
            "score_cache": str(output / "scores"),
        },
    }
    benchmark = {
        "class_path": "capl.callbacks.BenchmarkCallback",
        "init_args": {
            **config.benchmark,
            "output": str(folder / BENCHMARK_FILE),
            "run_name": point.point_id,
        },
    }
    trainer = _trainer_defaults(config)
    callbacks: list[dict[str, Any]]
    trainer["logger"] = _logger(output / "tb", point.point_id)
    if not retrain:
        callbacks = [pruning, benchmark]
    elif stage == "test":
        callbacks = [benchmark]
    else:
        callbacks = [pruning]
        if config.retrain.early_stopping_patience:
            callbacks.append(
                {
                    "class_path": "lightning.pytorch.callbacks.EarlyStopping",
                    "init_args": {
                        "monitor": "val/acc",
                        "mode": "max",
                        "patience": config.retrain.early_stopping_patience,
                    },
                }
            )
        callbacks += [
            {
                "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                "init_args": {
                    "dirpath": str(folder / "checkpoints"),
                    "filename": "best",
                    "monitor": "val/acc",
                    "mode": "max",
                    "save_top_k": 1,
                },
            },
            benchmark,
        ]
        trainer["max_epochs"] = point.retrain_epochs
        trainer.update(config.retrain.trainer)
    trainer["callbacks"] = callbacks
    data = {"class_path": config.data["class_path"], "init_args": init_args}
    return {"seed_everything": point.seed, "data": data, "model": model, "trainer": trainer}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _clean(folder: Path, tb: Path) -> None:
    """Remove what an interrupted or failed earlier attempt left (stale checkpoints, logs)."""
    for name in (RESULT_FILE, BENCHMARK_FILE, TRACEBACK_FILE):
        (folder / name).unlink(missing_ok=True)
    for sub in (folder / "checkpoints", tb):
        if sub.exists():
            shutil.rmtree(sub)


def run_point(config: SweepConfig, point: Point, base: str, output: str | Path) -> PointResult:
    """Run one point in this process and record it; never raises for a failing point.

    Prune only: ``capl test --config points/<id>/config.yaml``. With retraining: ``capl fit``
    with that config, then the fit's trainer tests the best checkpoint (``trainer.test(...,
    ckpt_path=best)``), so the retrained checkpoint is what gets benchmarked. ``test.yaml`` is
    the by-hand equivalent (``capl test --config test.yaml --ckpt_path best.ckpt``); the runner
    does not use it because LightningCLI replaces the model's settings by the checkpoint's
    hyperparameters, which for a pruned class-subset head currently lose ``head_classes``.
    Any exception (a ``SystemExit`` from a user error included) is recorded as
    ``status: failed`` with its message; the traceback goes to ``traceback.txt``.
    ``KeyboardInterrupt`` is not caught: the point stays unrecorded.

    Returns:
        The record, also written to ``points/<id>/result.json``.
    """
    output = Path(output).resolve()
    folder = output / "points" / point.point_id
    _clean(folder, output / "tb" / point.point_id)
    rerun = f"--config {folder / 'config.yaml'}"
    if point.retrain_epochs > 0:
        header = (
            f"# Sweep point {point.point_id}. Rerun by hand:\n#   capl fit {rerun}\n"
            f"#   capl test --config {folder / 'test.yaml'} --ckpt_path "
            f"{folder / 'checkpoints' / 'best.ckpt'}\n"
        )
        fit_yaml = _write_yaml(
            folder / "config.yaml", point_config(config, point, base, output, "fit"), header
        )
        _write_yaml(folder / "test.yaml", point_config(config, point, base, output, "test"), header)
    else:
        header = f"# Sweep point {point.point_id}. Rerun by hand:\n#   capl test {rerun}\n"
        fit_yaml = _write_yaml(
            folder / "config.yaml", point_config(config, point, base, output, "test"), header
        )
    start = time.perf_counter()
    error: str | None = None
    cached: bool | None = None
    try:
        cli = _capl(["fit" if point.retrain_epochs > 0 else "test", "--config", str(fit_yaml)])
        cached = _scores_cached(cli)
        if point.retrain_epochs > 0:
            # the best checkpoint is tested by the fit's own trainer, which still holds the
            # PruningCallback (plan, base copy) and the BenchmarkCallback: see module docstring
            best = _best_checkpoint(cli, folder / "checkpoints")
            cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=best)
        del cli
        if not (folder / BENCHMARK_FILE).is_file():
            raise RuntimeError(f"the run wrote no {BENCHMARK_FILE}")
    except KeyboardInterrupt:
        raise
    except BaseException as err:
        error = f"{type(err).__name__}: {err}" if not isinstance(err, ConfigError) else str(err)
        error = " ".join(error.split()) or type(err).__name__
        write_text_atomic(folder / TRACEBACK_FILE, traceback.format_exc())
        log.error("sweep point %s failed: %s", point.point_id, error)
    finally:
        gc.collect()
    result = PointResult(
        point_id=point.point_id,
        index=point.index,
        status="ok" if error is None else "failed",
        error=error,
        duration_s=round(time.perf_counter() - start, 3),
        benchmark_path=to_record(output, folder / BENCHMARK_FILE) if error is None else None,
        scores_cached=cached,
        finished=_now(),
        settings=point.settings(config.base.network),
    )
    write_json_atomic(folder / RESULT_FILE, asdict(result))
    return result


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
    trains_base = base.checkpoint is None and not any(
        (output / "base").glob(f"{stable_hash(_base_settings(config))}/{BASE_DONE}")
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


def _scores_cached(cli: Any) -> bool | None:
    from capl.callbacks import PruningCallback

    for callback in getattr(getattr(cli, "trainer", None), "callbacks", []):
        if isinstance(callback, PruningCallback):
            return bool(callback.scores_from_cache)
    return None


def read_record(output: str | Path, point_id: str) -> dict[str, Any] | None:
    """A point's ``result.json``, or ``None`` when it has not finished (or the file is bad)."""
    path = Path(output) / "points" / point_id / RESULT_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


# --------------------------------------------------------------------------------------------
# Rows and the whole sweep


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
            continue
        extra = {
            "index": point.index,
            "duration_s": record.get("duration_s"),
            "benchmark_path": record.get("benchmark_path"),
            "scores_cached": record.get("scores_cached"),
        }
        settings = point.settings(config.base.network)
        if record.get("status") == "ok":
            try:
                benchmark = json.loads(record_file(output, point, record).read_text())
            except (OSError, json.JSONDecodeError, TypeError, KeyError) as err:
                row = result_row(
                    point.point_id,
                    None,
                    error=f"benchmark.json unreadable: {err}",
                    point=settings,
                    **extra,
                )
            else:
                row = result_row(point.point_id, benchmark, point=settings, **extra)
                # the report groups by the grid's budget; benchmark.json has what was trained
                row["retrain_epochs_trained"] = row.get("retrain_epochs")
                row["retrain_epochs"] = point.retrain_epochs
        else:
            row = result_row(
                point.point_id, None, error=record.get("error") or "failed", point=settings, **extra
            )
        rows.append(row)
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
    write_json_atomic(marker, {"fingerprint": fingerprint, "name": config.name, "created": _now()})


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
    preflight.prepare_output(output)
    if not merge:
        _check_before_run(config, points if index is None else [points[index]], output, force)
    output.mkdir(parents=True, exist_ok=True)
    _check_folder(config, output)
    if merge:
        run.rows = write_outputs(config, points, output, plots)
        run.seconds = time.perf_counter() - start
        return run
    base_start = time.perf_counter()
    base = base_checkpoint(config, output)
    run.base_seconds = time.perf_counter() - base_start
    if base_only:
        run.seconds = time.perf_counter() - start
        return run
    todo = []
    for point in points if index is None else [points[index]]:
        record = read_record(output, point.point_id)
        if record is not None and record.get("status") == "ok" and not force:
            run.already_done.append(point.point_id)
        else:
            todo.append(point)
    loop_start = time.perf_counter()
    for done, point in enumerate(todo):
        where = f"{done + 1}/{len(todo)}" if index is None else f"{index + 1} of {len(points)}"
        log.info(
            "sweep point %s: %s (%s)",
            where,
            point.point_id,
            _progress(done, len(todo), time.perf_counter() - loop_start),
        )
        run.ran.append(run_point(config, point, base, output))
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
