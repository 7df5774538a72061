"""Running the ``capl`` CLI in-process for the sweep, and the config pieces every run shares.

:func:`run_capl` calls :func:`capl.cli.main` as if from the command line and turns its exits
into exceptions the sweep understands: a user error becomes a one-line
:class:`~capl.errors.ConfigError`, Ctrl-C a ``KeyboardInterrupt``, SIGTERM an
:class:`~capl.sweep.signals.Interrupted`.
"""

from __future__ import annotations

import contextlib
import io
import signal
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

from capl.errors import ConfigError
from capl.io import write_text_atomic
from capl.sweep.signals import Interrupted
from capl.sweep.spec import SweepConfig

__all__ = [
    "best_checkpoint",
    "checkpoint_config",
    "logger_config",
    "run_capl",
    "trainer_defaults",
    "write_yaml",
]


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


def run_capl(args: Sequence[str]) -> Any:
    """``capl.cli.main(args)``; a user error becomes a ConfigError carrying its message.

    Returns:
        The LightningCLI object (its trainer, model and datamodule).

    Raises:
        ConfigError: The CLI exited with a user error (its ``error:`` line is the message).
        KeyboardInterrupt: Ctrl-C (the SIGINT handler Lightning replaced is restored).
        Interrupted: SIGTERM, as Lightning reports it.
        RuntimeError: The CLI exited successfully without running (e.g. ``--help``).
    """
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


def best_checkpoint(cli: Any, folder: Path) -> str:
    """The fit's best checkpoint (its ModelCheckpoint's), else the first ``*.ckpt`` in ``folder``.

    Raises:
        ConfigError: The fit wrote no checkpoint.
    """
    callback = getattr(getattr(cli, "trainer", None), "checkpoint_callback", None)
    best = getattr(callback, "best_model_path", "") if callback is not None else ""
    if best and Path(best).is_file():
        return str(Path(best).resolve())
    found = sorted(folder.glob("*.ckpt"))
    if not found:
        raise ConfigError(f"training wrote no checkpoint into {folder}")
    return str(found[0].resolve())


def write_yaml(path: Path, config: dict[str, Any], header: str = "") -> Path:
    """Write a run config atomically, after a comment ``header`` (how to rerun it by hand)."""
    text = yaml.safe_dump(config, sort_keys=False, default_flow_style=False)
    return write_text_atomic(path, header + text)


def logger_config(save_dir: Path, version: str) -> dict[str, Any]:
    """The TensorBoardLogger entry of a run: ``save_dir/<version>``."""
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


def checkpoint_config(folder: Path) -> dict[str, Any]:
    """The ModelCheckpoint entry keeping the best ``val/acc`` epoch as ``folder/best.ckpt``."""
    return {
        "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
        "init_args": {
            "dirpath": str(folder),
            "filename": "best",
            "monitor": "val/acc",
            "mode": "max",
            "save_top_k": 1,
        },
    }


def trainer_defaults(config: SweepConfig) -> dict[str, Any]:
    """The Trainer options of every run: quiet, deterministic, CPU; the sweep's ``trainer:``."""
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
