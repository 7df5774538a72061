"""Stable run folders: SLURM versions, requeue checkpoints in the run folder, no second fit on top.

The real requeue on a real cluster is in test_slurm.py; these are the rules on plain configs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from capl.cli import main
from capl.errors import ConfigError
from capl.run_dir import pin_run_folder, slurm_version
from tests.conftest import CONFIGS

JOB = {"SLURM_JOB_ID": "41", "SLURM_JOB_NAME": "capl-fit"}
ARRAY = {**JOB, "SLURM_ARRAY_JOB_ID": "40", "SLURM_ARRAY_TASK_ID": "3"}


def config(save_dir: Path, version: str | int | None = None) -> dict:
    logger = {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": str(save_dir), "name": "run", "version": version},
    }
    return {"trainer": {"logger": logger, "default_root_dir": None}, "ckpt_path": None}


def test_slurm_version_names_the_job_or_the_array_task() -> None:
    assert slurm_version({}) is None
    assert slurm_version(JOB) == "slurm_41"
    assert slurm_version(ARRAY) == "slurm_40_3"
    assert slurm_version({**JOB, "SLURM_JOB_NAME": "interactive"}) is None


def test_inside_a_job_the_logger_and_root_dir_share_the_job_folder(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    folder = pin_run_folder(cfg, "fit", JOB)
    assert folder == tmp_path / "run" / "slurm_41"
    assert cfg["trainer"]["logger"]["init_args"]["version"] == "slurm_41"
    assert cfg["trainer"]["default_root_dir"] == str(folder)
    # outside SLURM an unversioned logger keeps Lightning's version_<n>: nothing is pinned
    free = config(tmp_path)
    assert pin_run_folder(free, "fit", {}) is None
    assert free["trainer"]["logger"]["init_args"]["version"] is None
    assert free["trainer"]["default_root_dir"] is None
    # a fixed version is kept, also inside a job, and an integer reads as version_<n>
    assert pin_run_folder(config(tmp_path, "base"), "test", JOB) == tmp_path / "run" / "base"
    assert pin_run_folder(config(tmp_path, 2), "test", {}) == tmp_path / "run" / "version_2"


def test_requeued_fit_resumes_from_the_newest_requeue_checkpoint(tmp_path: Path) -> None:
    run = tmp_path / "run" / "slurm_41"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"")
    for n in (1, 2, 10):
        (run / f"hpc_ckpt_{n}.ckpt").write_bytes(b"")
    cfg = config(tmp_path)
    pin_run_folder(cfg, "fit", JOB)
    assert cfg["ckpt_path"] == str(run / "hpc_ckpt_10.ckpt")
    # outside a job the same folder is an earlier run's: a fit on top of it is refused
    fixed = config(tmp_path, "slurm_41")
    with pytest.raises(ConfigError, match="already holds the checkpoints of an earlier run"):
        pin_run_folder(fixed, "fit", {})
    # resuming it explicitly, or testing in it, is fine
    resume = {**config(tmp_path, "slurm_41"), "ckpt_path": str(run / "checkpoints/last.ckpt")}
    assert pin_run_folder(resume, "fit", {}) == run
    assert pin_run_folder(config(tmp_path, "slurm_41"), "test", {}) == run


def test_cli_refuses_a_second_fit_into_a_finished_run_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [
        "fit", "--config", str(CONFIGS / "default.yaml"),
        "--trainer.logger.init_args.save_dir", str(tmp_path),
        "--trainer.logger.init_args.version", "base",
    ]  # fmt: skip
    (tmp_path / "digits_resnet18" / "base" / "checkpoints").mkdir(parents=True)
    (tmp_path / "digits_resnet18" / "base" / "checkpoints" / "best.ckpt").write_bytes(b"x")
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already holds the checkpoints of an earlier run" in err[0]
    assert sorted(p.name for p in (tmp_path / "digits_resnet18" / "base").iterdir()) == [
        "checkpoints"
    ]  # nothing written
