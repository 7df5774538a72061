"""Lightning conventions in capl's configs and a quiet console.

- A cosine schedule anneals over the whole run: its ``T_max`` follows ``trainer.max_epochs``
  (the learning rates TensorBoard records are checked against the cosine formula), and the
  training configs log them with a LearningRateMonitor.
- A plain ``capl test`` on the shipped configs prints none of the third-party lines a user can do
  nothing about (litlogger/litmodels tips, torch's LeafSpec deprecation inside Lightning, the
  ``srun`` hint outside SLURM, libkineto's USDT/gpuGetDeviceCount lines, LightningCLI's
  args-and-sys.argv warning under capl-sweep), and capl's own progress lines once each.
- ``capl test --ckpt_path`` of a checkpoint written in another folder does not show
  ModelCheckpoint's note that its top-k state won't be reloaded; a resumed ``fit`` still does.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from capl.cli import main
from capl.sweep.runner import _capl
from tests.conftest import CONFIGS, quiet_trainer

NOISE = (
    "💡 Tip",
    "litlogger",
    "litmodels",
    "LeafSpec",
    "The `srun` command is available",
    "USDT:",
    "gpuGetDeviceCount",
    "args parameter is intended to run from within Python",
)


def test_cosine_t_max_follows_max_epochs_and_lr_is_logged(tmp_path: Path) -> None:
    # default.yaml says T_max: 6 for its 6 epochs; a 3-epoch run must anneal over 3 epochs
    cli = main(
        ["fit", "--config", str(CONFIGS / "default.yaml"), "--model.network", "resnet20"]
        + ["--trainer.max_epochs", "3", "--trainer.limit_train_batches", "2"]
        + ["--trainer.limit_val_batches", "0.34"]
        + quiet_trainer(tmp_path, "cos")
    )
    assert cli is not None
    scheduler = cli.trainer.lr_scheduler_configs[0].scheduler
    assert scheduler.T_max == 3
    events = EventAccumulator(cli.trainer.log_dir)
    events.Reload()
    lrs = [e.value for e in events.Scalars("lr-SGD")]
    base = 0.05  # default.yaml's SGD lr
    expected = [base * (1 + math.cos(math.pi * epoch / 3)) / 2 for epoch in range(3)]
    assert lrs == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("name", ["default.yaml", "runs/prune_retrain.yaml"])
def test_training_configs_monitor_the_learning_rate(name: str) -> None:
    config = yaml.safe_load((CONFIGS / name).read_text())
    paths = [c["class_path"] for c in config["trainer"]["callbacks"]]
    assert "lightning.pytorch.callbacks.LearningRateMonitor" in paths


def _test_args(digits_base: Path, tmp_path: Path) -> list[str]:
    return [
        "test", "--config", str(CONFIGS / "runs" / "prune_test.yaml"),
        "--model.network", "resnet20", "--model.weights", str(digits_base),
        "--trainer.callbacks.repeats=2", "--trainer.callbacks.warmup=1",
        "--trainer.callbacks.min_time_s=0",
        *quiet_trainer(tmp_path, "quiet"),
    ]  # fmt: skip


def _assert_quiet(text: str, caught: list[warnings.WarningMessage]) -> None:
    messages = [str(w.message) for w in caught]
    assert [m for m in messages if any(n in m for n in NOISE)] == []
    lines = [ln for ln in text.splitlines() if any(n in ln for n in NOISE)]
    assert lines == []


def _python_default_filters() -> None:
    """What a plain ``python`` process shows (pytest's own filters hide more)."""
    warnings.resetwarnings()
    warnings.simplefilter("default")
    for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning,
                     ResourceWarning):  # fmt: skip
        warnings.filterwarnings("ignore", category=category)
    warnings.filterwarnings("default", category=DeprecationWarning, module="__main__")


def test_plain_capl_test_prints_no_third_party_noise(
    digits_base: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setattr("sys.argv", ["capl"])  # as the console script runs it
    with warnings.catch_warnings(record=True) as caught:
        _python_default_filters()
        cli = main(_test_args(digits_base, tmp_path))
    assert cli is not None and (Path(cli.trainer.log_dir) / "benchmark.json").is_file()
    out, err = capfd.readouterr()
    _assert_quiet(out + err, caught)
    # capl's own progress is shown, once
    progress = [ln for ln in err.splitlines() if ln.startswith("capl.benchmark.profile: latency")]
    assert progress and len(progress) == len(set(progress))


def test_in_process_runs_of_a_sweep_are_quiet_too(
    digits_base: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    # capl-sweep's own arguments are in sys.argv while it runs each point through capl.cli.main
    monkeypatch.setattr("sys.argv", ["capl-sweep", "--config", "sweep.yaml", "--output", "x"])
    with warnings.catch_warnings(record=True) as caught:
        _python_default_filters()
        _capl(_test_args(digits_base, tmp_path))
    out, err = capfd.readouterr()
    _assert_quiet(out + err, caught)


def test_test_from_another_folders_checkpoint_has_no_top_k_note(
    digits_base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.argv", ["capl"])
    args = ["test", "--config", str(CONFIGS / "default.yaml"), "--model.network", "resnet20",
            "--ckpt_path", str(digits_base), *quiet_trainer(tmp_path, "t")]  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        _python_default_filters()
        cli = main(args)
        left = [f for f in warnings.filters if f[1] is not None and "dirpath" in f[1].pattern]
    assert cli is not None and float(cli.trainer.callback_metrics["test/acc"]) >= 0.9
    assert [str(w.message) for w in caught if "dirpath has changed" in str(w.message)] == []
    # the filter lasted only for the run: a fit resumed in another folder still gets the note
    assert left == []
