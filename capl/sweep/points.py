"""One grid point: its ``capl`` config, and running it in-process into a record.

A point's ``pruning:`` and ``benchmark:`` callback entries are the sweep's own sections (the
callbacks' ``init_args``, validated by :mod:`capl.sweep.options`) with only what the point owns
laid over them: criterion, ratio, scope, target and score cache; output and run name.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import shutil
import time
import traceback
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from capl.benchmark.group import LatencyJob
from capl.errors import ConfigError
from capl.io import write_json_atomic, write_text_atomic
from capl.sweep.grid import Point
from capl.sweep.launch import (
    best_checkpoint,
    checkpoint_config,
    logger_config,
    run_capl,
    trainer_defaults,
    write_yaml,
)
from capl.sweep.records import BENCHMARK_FILE, RESULT_FILE, TRACEBACK_FILE, now, to_record
from capl.sweep.spec import SweepConfig

__all__ = [
    "BASE_BENCH_DIR",
    "LATENCY_DIR",
    "PendingPoint",
    "PointResult",
    "long_lived_objects_frozen",
    "point_config",
    "run_point",
]

log = logging.getLogger(__name__)

BASE_BENCH_DIR = "base_bench"
"""``OUTPUT/base_bench``: the base model's benchmark block, measured once for all points."""
LATENCY_DIR = "latency"
"""``OUTPUT/latency``: the per-layer latency tables of ``target: latency``, shared by all points."""
ONNX_FILES = ("before.onnx", "after.onnx")  # exports an interrupted deferred point may leave


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
class PendingPoint:
    """A point pruned and benchmarked but for latency; its group times it and writes its record.

    See :class:`capl.sweep.sharing.LatencyGroup`.

    Attributes:
        result: The point's record (``status: ok``), not yet on disk.
        job: The benchmark's deferred latency.
        folder: The point's folder.
    """

    result: PointResult
    job: LatencyJob
    folder: Path


# --------------------------------------------------------------------------------------------
# The point's config


def _model(config: SweepConfig, base: str, retrain: bool) -> dict[str, Any]:
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
    return model


def _pruning(config: SweepConfig, point: Point, output: Path) -> dict[str, Any]:
    """The sweep's ``pruning:`` options with the point's criterion, budget and score cache."""
    return {
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
            **_latency(config, point, output),
        },
    }


def _latency(config: SweepConfig, point: Point, output: Path) -> dict[str, Any]:
    """The point's ``latency`` spec, its table kept in ``OUTPUT/latency`` unless it names a cache.

    Without a cache every ``target: latency`` point would measure the same base network's
    per-layer table again (seconds to minutes); with it the first point measures and the
    others read. An explicit ``cache: null`` still measures every time.
    """
    given = config.pruning.get("latency")
    if given is None and point.target != "latency":
        return {}
    return {"latency": {"cache": str(output / LATENCY_DIR), **dict(given or {})}}


def _benchmark(
    config: SweepConfig, point: Point, output: Path, defer_latency: bool
) -> dict[str, Any]:
    """The sweep's ``benchmark:`` options writing the point's ``benchmark.json``.

    The base model's block comes from ``OUTPUT/base_bench`` unless the sweep sets
    ``base_cache`` itself (``null``: measured by every point); latency is ``deferred`` to the
    runner's group run when ``defer_latency``, else paired in the point's own run.
    """
    return {
        "class_path": "capl.callbacks.BenchmarkCallback",
        "init_args": {
            "base_cache": str(output / BASE_BENCH_DIR),
            **config.benchmark,
            "latency": "deferred" if defer_latency else "paired",
            "output": str(output / "points" / point.point_id / BENCHMARK_FILE),
            "run_name": point.point_id,
        },
    }


def _retrain_callbacks(config: SweepConfig, folder: Path) -> list[dict[str, Any]]:
    """EarlyStopping (when asked for) and the ModelCheckpoint of a retraining fit."""
    callbacks = []
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
    return [*callbacks, checkpoint_config(folder / "checkpoints")]


def point_config(
    config: SweepConfig,
    point: Point,
    base: str,
    output: str | Path,
    stage: str = "fit",
    defer_latency: bool = False,
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
        defer_latency: The benchmark leaves latency to the runner's group run
            (:mod:`capl.sweep.sharing`) instead of timing the point against the base itself.

    Returns:
        A plain dict, ready for YAML.
    """
    output = Path(output).resolve()
    folder = output / "points" / point.point_id
    retrain = point.retrain_epochs > 0
    init_args = {**config.data["init_args"], "seed": point.seed}
    if point.classes is not None or "classes" in init_args:
        init_args["classes"] = point.classes
    pruning = _pruning(config, point, output)
    benchmark = _benchmark(config, point, output, defer_latency)
    trainer = trainer_defaults(config)
    trainer["logger"] = logger_config(output / "tb", point.point_id)
    if not retrain:
        callbacks = [pruning, benchmark]
    elif stage == "test":
        callbacks = [benchmark]
    else:
        callbacks = [pruning, *_retrain_callbacks(config, folder), benchmark]
        trainer["max_epochs"] = point.retrain_epochs
        trainer.update(config.retrain.trainer)
    trainer["callbacks"] = callbacks
    data = {"class_path": config.data["class_path"], "init_args": init_args}
    model = _model(config, base, retrain)
    return {"seed_everything": point.seed, "data": data, "model": model, "trainer": trainer}


# --------------------------------------------------------------------------------------------
# Running it


def _clean(folder: Path, tb: Path) -> None:
    """Remove what an interrupted or failed earlier attempt left (stale checkpoints, logs)."""
    for name in (RESULT_FILE, BENCHMARK_FILE, TRACEBACK_FILE, *ONNX_FILES):
        (folder / name).unlink(missing_ok=True)
    for sub in (folder / "checkpoints", tb):
        if sub.exists():
            shutil.rmtree(sub)


def _write_configs(
    config: SweepConfig, point: Point, base: str, output: Path, defer_latency: bool = False
) -> Path:
    """Write ``config.yaml`` (and ``test.yaml`` after retraining); the one the runner uses."""
    folder = output / "points" / point.point_id
    rerun = f"--config {folder / 'config.yaml'}"
    deferred = (
        "# Its benchmark has latency: deferred (capl-sweep times the point with its group\n"
        "# against the base); set it to paired to time the point here.\n"
        if defer_latency
        else ""
    )
    if point.retrain_epochs == 0:
        header = f"# Sweep point {point.point_id}. Rerun by hand:\n#   capl test {rerun}\n"
        test = point_config(config, point, base, output, "test", defer_latency)
        return write_yaml(folder / "config.yaml", test, header + deferred)
    header = (
        f"# Sweep point {point.point_id}. Rerun by hand:\n#   capl fit {rerun}\n"
        f"#   capl test --config {folder / 'test.yaml'} --ckpt_path "
        f"{folder / 'checkpoints' / 'best.ckpt'}\n"
    )
    fit = point_config(config, point, base, output, "fit", defer_latency)
    fit_yaml = write_yaml(folder / "config.yaml", fit, header + deferred)
    write_yaml(folder / "test.yaml", point_config(config, point, base, output, "test"), header)
    return fit_yaml


def _scores_cached(cli: Any) -> bool | None:
    from capl.callbacks import PruningCallback

    for callback in getattr(getattr(cli, "trainer", None), "callbacks", []):
        if isinstance(callback, PruningCallback):
            return bool(callback.scores_from_cache)
    return None


def _test_best(cli: Any, folder: Path) -> None:
    """Test the retrained best checkpoint with the fit's own trainer (see :func:`run_point`)."""
    # that trainer still holds the PruningCallback (plan, base copy) and the BenchmarkCallback
    best = best_checkpoint(cli, folder / "checkpoints")
    cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=best)


def _pending_job(cli: Any) -> LatencyJob:
    """The deferred latency the run's BenchmarkCallback left."""
    from capl.callbacks import BenchmarkCallback

    for callback in getattr(getattr(cli, "trainer", None), "callbacks", []):
        if isinstance(callback, BenchmarkCallback) and callback.pending is not None:
            return callback.pending
    raise RuntimeError("the run left no deferred latency (BenchmarkCallback latency: deferred)")


@contextlib.contextmanager
def long_lived_objects_frozen() -> Iterator[None]:
    """Leave the objects alive now out of the garbage collections that end each point.

    :func:`run_point` ends with a full ``gc.collect()`` so that the CLI, trainer and model a
    point built (held in reference cycles) are freed before the next one. With torch,
    Lightning, jsonargparse and matplotlib loaded, such a collection walks about half a million
    long-lived objects: 0.22 s a point, a tenth of a prune-only point's work outside its
    latency timing. Frozen (``gc.freeze``), they are skipped, and a collection walks only what
    the points allocated since (0.01 s). They are unfrozen on the way out, interrupted or
    not, so that they are collectable again. (``gc.unfreeze`` thaws every frozen object, also
    any that a caller froze.)
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def run_point(
    config: SweepConfig,
    point: Point,
    base: str,
    output: str | Path,
    defer_latency: bool = False,
) -> PointResult | PendingPoint:
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

    Args:
        config: The sweep.
        point: The grid point.
        base: The base model's weights.
        output: The sweep folder.
        defer_latency: Leave latency to a :class:`~capl.sweep.sharing.LatencyGroup`: a point
            that ran comes back as a :class:`PendingPoint` whose record the group writes.

    Returns:
        The record, also written to ``points/<id>/result.json``; or, with ``defer_latency``
        and no failure, the pending point (nothing recorded yet).
    """
    output = Path(output).resolve()
    folder = output / "points" / point.point_id
    _clean(folder, output / "tb" / point.point_id)
    run_yaml = _write_configs(config, point, base, output, defer_latency)
    start = time.perf_counter()
    error: str | None = None
    cached: bool | None = None
    job: LatencyJob | None = None
    try:
        cli = run_capl(["fit" if point.retrain_epochs > 0 else "test", "--config", str(run_yaml)])
        cached = _scores_cached(cli)
        if point.retrain_epochs > 0:
            _test_best(cli, folder)
        if defer_latency:
            job = _pending_job(cli)
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
        finished=now(),
        settings=point.settings(config.base.network),
    )
    if error is None and job is not None:
        return PendingPoint(result=result, job=job, folder=folder)
    write_json_atomic(folder / RESULT_FILE, asdict(result))
    return result
