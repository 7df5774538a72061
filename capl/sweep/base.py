"""The sweep's base model: the configured checkpoint, or one trained once per settings.

Without ``base.checkpoint`` the base model is trained with ``capl fit`` into
``OUTPUT/base/<hash of the base settings>/`` under a file lock, so parallel array tasks wait for
the first one; ``base.json`` marks it done and every later run with the same settings reuses it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from capl.errors import ConfigError
from capl.io import write_json_atomic
from capl.sweep.launch import (
    best_checkpoint,
    checkpoint_config,
    logger_config,
    run_capl,
    trainer_defaults,
    write_yaml,
)
from capl.sweep.records import from_record, now, to_record
from capl.sweep.spec import SweepConfig, stable_hash

__all__ = ["BASE_DONE", "base_checkpoint", "base_folder", "base_settings"]

log = logging.getLogger(__name__)

BASE_DONE = "base.json"


def base_settings(config: SweepConfig) -> dict[str, Any]:
    """What decides the trained base model (its folder is named by their hash)."""
    base = asdict(config.base)
    base.pop("trust_weights")  # how the checkpoint is read, not which model is trained
    return {"base": base, "data": config.data, "trainer": config.trainer}


def base_folder(config: SweepConfig, output: str | Path) -> Path:
    """``OUTPUT/base/<hash>``: where the sweep trains (or has trained) its base model."""
    return Path(output).resolve() / "base" / stable_hash(base_settings(config))


def _base_config(config: SweepConfig, folder: Path) -> dict[str, Any]:
    """The ``capl fit`` config that trains the base model into ``folder``."""
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
    trainer = trainer_defaults(config)
    trainer.update(
        max_epochs=train.max_epochs,
        logger=logger_config(folder, "logs"),
        callbacks=[checkpoint_config(folder / "checkpoints")],
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


def _train_base(config: SweepConfig, output: str | Path, folder: Path) -> str:
    """Train the base model into ``folder`` (from scratch) and mark it done; its checkpoint."""
    if folder.exists():  # an interrupted earlier attempt
        shutil.rmtree(folder)
    base_yaml = write_yaml(
        folder / "config.yaml",
        _base_config(config, folder),
        "# The sweep's base model. Rerun by hand: capl fit --config <this file>\n",
    )
    log.info("training the base model (%s) into %s", config.base.network, folder)
    start = time.perf_counter()
    cli = run_capl(["fit", "--config", str(base_yaml)])
    best = best_checkpoint(cli, folder / "checkpoints")
    write_json_atomic(
        folder / BASE_DONE,
        {
            "checkpoint": to_record(output, best),
            "settings": base_settings(config),
            "seconds": time.perf_counter() - start,
            "created": now(),
        },
    )
    return best


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
    folder = base_folder(config, output)
    done = folder / BASE_DONE
    with _file_lock(folder.with_suffix(".lock")):
        if done.is_file():
            return str(from_record(output, json.loads(done.read_text())["checkpoint"]))
        if not train:
            raise ConfigError(
                f"base model not trained yet ({folder}): run capl-sweep without "
                "--index first, or with --base-only"
            )
        return _train_base(config, output, folder)
