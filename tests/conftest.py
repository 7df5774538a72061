"""Shared fixtures: a small base model trained once per test session through the real CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

from capl.cli import main

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


def quiet_trainer(tmp: Path, name: str) -> list[str]:
    """CLI arguments that keep a test run's logs in ``tmp`` and its console quiet."""
    return [
        "--trainer.logger.init_args.save_dir",
        str(tmp),
        "--trainer.logger.init_args.name",
        name,
        "--trainer.logger.init_args.version",  # version_<n>, not the configs' fixed run names
        "null",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
    ]


@pytest.fixture(scope="session")
def digits_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A resnet20 trained on all ten digits for 3 epochs; returns its best checkpoint."""
    tmp = tmp_path_factory.mktemp("base")
    cli = main(
        [
            "fit",
            "--config",
            str(CONFIGS / "default.yaml"),
            "--model.network",
            "resnet20",
            "--trainer.max_epochs",
            "3",
            "--model.lr_scheduler.init_args.T_max",
            "3",
            *quiet_trainer(tmp, "base"),
        ]
    )
    assert cli is not None
    best = cli.trainer.checkpoint_callback.best_model_path
    assert best and Path(best).is_file()
    return Path(best)
