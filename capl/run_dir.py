"""One folder per run: the logger's log dir also holds Lightning's SLURM requeue checkpoints.

Lightning writes the checkpoint it saves on SLURM's requeue signal (``hpc_ckpt_<n>.ckpt``) to
``trainer.default_root_dir`` (the working directory by default) and resumes from it when the job
restarts, while a TensorBoardLogger without a version starts a new ``version_<n>`` folder on
every start. A requeued run therefore left its checkpoint in the working directory and split its
curves over two versions. :func:`pin_run_folder` fixes both before the trainer is built:

- inside a SLURM job, a TensorBoard/CSV logger without a version gets ``slurm_<job id>`` (array
  tasks: ``slurm_<array job id>_<task id>``), the same on every rank and after a requeue, so the
  resumed run appends to the same folder;
- when the logger's folder is known, ``default_root_dir`` (unless set) becomes that folder, so
  requeue checkpoints live with the run's other files;
- a requeued ``capl fit`` (no ``--ckpt_path``, a requeue checkpoint in the run folder) resumes
  from the newest requeue checkpoint, named as ``ckpt_path`` before setup, so that the pruning
  callback takes the plan from it instead of selecting again;
- ``capl fit`` into a folder that already holds an earlier run's checkpoints is refused (results
  are data: a second run would mix its curves and files into the first one's), except when
  resuming (``--ckpt_path``, or a requeue checkpoint as above).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from capl.errors import ConfigError

__all__ = ["pin_run_folder", "slurm_version"]

# loggers whose log dir is save_dir/name/version (version None: next free version_<n>)
_VERSIONED_LOGGERS = (
    "lightning.pytorch.loggers.TensorBoardLogger",
    "lightning.pytorch.loggers.tensorboard.TensorBoardLogger",
    "lightning.pytorch.loggers.CSVLogger",
    "lightning.pytorch.loggers.csv_logs.CSVLogger",
    "TensorBoardLogger",
    "CSVLogger",
)


def slurm_version(environ: Mapping[str, str] | None = None) -> str | None:
    """The run version of this SLURM job, stable across ranks and requeues; ``None`` outside.

    Args:
        environ: Environment to read (default ``os.environ``).

    Returns:
        ``slurm_<SLURM_JOB_ID>``, ``slurm_<SLURM_ARRAY_JOB_ID>_<SLURM_ARRAY_TASK_ID>`` for an
        array task, or ``None`` without ``SLURM_JOB_ID`` (and in Lightning's interactive mode,
        job name ``bash`` or ``interactive``).
    """
    env = os.environ if environ is None else environ
    job = env.get("SLURM_JOB_ID")
    if not job or env.get("SLURM_JOB_NAME") in ("bash", "interactive"):
        return None
    array_job, task = env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID")
    if array_job and task:
        return f"slurm_{array_job}_{task}"
    return f"slurm_{job}"


def _get(node: Any, key: str) -> Any:
    return node.get(key) if isinstance(node, Mapping) else getattr(node, key, None)


def _set(node: Any, key: str, value: Any) -> None:
    if isinstance(node, dict):
        node[key] = value
    else:
        setattr(node, key, value)


def _log_dir(logger: Any, environ: Mapping[str, str] | None) -> Path | None:
    """Pin a versioned logger's version under SLURM; its log dir when the version is known."""
    if _get(logger, "class_path") not in _VERSIONED_LOGGERS:
        return None
    init = _get(logger, "init_args")
    if init is None:
        return None
    version = _get(init, "version")
    if version is None:
        version = slurm_version(environ)
        if version is None:
            return None
        _set(init, "version", version)
    if not isinstance(version, str):
        version = f"version_{version}"
    save_dir, name = _get(init, "save_dir"), _get(init, "name")
    if save_dir is None:
        return None
    return Path(save_dir) / name / version if name else Path(save_dir) / version


def _latest_hpc_checkpoint(folder: Path) -> Path | None:
    """``hpc_ckpt_<n>.ckpt`` with the largest ``n`` in ``folder`` (Lightning's choice)."""
    numbered = []
    for path in folder.glob("hpc_ckpt_*.ckpt"):
        number = path.stem.removeprefix("hpc_ckpt_")
        if number.isdigit():
            numbered.append((int(number), path))
    return max(numbered)[1] if numbered else None


def pin_run_folder(
    config: Any,
    subcommand: str | None,
    environ: Mapping[str, str] | None = None,
) -> Path | None:
    """Make a run's folder stable before the trainer is built (see the module docstring).

    Args:
        config: The parsed config of the subcommand (a jsonargparse Namespace or a dict) holding
            ``trainer`` and, for ``fit``, ``ckpt_path``; changed in place.
        subcommand: ``fit``, ``validate``, ``test``, ``predict`` or ``None``.
        environ: Environment to read (default ``os.environ``).

    Returns:
        The run folder when it is known, else ``None`` (no logger with a fixed folder).

    Raises:
        ConfigError: ``fit`` into a folder holding an earlier run's checkpoints, not resuming.
    """
    trainer = _get(config, "trainer")
    if trainer is None:
        return None
    loggers = _get(trainer, "logger")
    if not isinstance(loggers, list):
        loggers = [loggers]
    folders = [d for d in (_log_dir(lg, environ) for lg in loggers if lg) if d is not None]
    if not folders:
        return None
    folder = folders[0]
    if _get(trainer, "default_root_dir") is None:
        _set(trainer, "default_root_dir", str(folder))
    root = Path(_get(trainer, "default_root_dir"))
    if subcommand == "fit" and _get(config, "ckpt_path") is None:
        requeued = _latest_hpc_checkpoint(root) if slurm_version(environ) else None
        if requeued is not None:
            # what Lightning would pick itself after setup; named here so that the pruning
            # callback sees, in setup, that the checkpoint carries the plan
            _set(config, "ckpt_path", str(requeued))
    if (
        subcommand == "fit"
        and _get(config, "ckpt_path") is None
        and any((folder / "checkpoints").glob("*.ckpt"))
    ):
        raise ConfigError(
            f"{folder} already holds the checkpoints of an earlier run: give this run its own "
            "folder (--trainer.logger.init_args.version NAME), resume it (--ckpt_path "
            "CHECKPOINT) or remove the folder"
        )
    return folder
