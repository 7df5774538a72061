"""Shared fixtures: a small base model trained once per test session through the real CLI."""

from __future__ import annotations

import os
from pathlib import Path

# Plans in tests must not depend on the test machine's vector width (round_to auto is 16 on
# AVX-512, 8 otherwise). torch reads this before its first kernel dispatch; the capl processes
# the tests start (DDP, capl-sweep, SLURM jobs) inherit it, so they plan like this process.
os.environ.setdefault("ATEN_CPU_CAPABILITY", "avx2")

import pytest
import torch
from torch import nn

from capl.cli import main

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


@pytest.fixture(autouse=True)
def avx2_round_to(monkeypatch: pytest.MonkeyPatch) -> None:
    """Plans in tests do not depend on the test machine's vector width.

    ``round_to: auto`` on CPU keeps multiples of 16 on AVX-512 and of 8 otherwise
    (:func:`capl.pruning.auto_round_to`); the suite pins the CPU capability torch reports to
    AVX2 (8), here and through ``ATEN_CPU_CAPABILITY`` in the processes it starts, and tests of
    the AVX-512 rule patch it themselves.
    """
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")


@pytest.fixture
def one_thread():
    """Run the test on one torch thread: tiny convs are much faster single-threaded."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def randomise_batchnorm(net: nn.Module, seed: int = 1) -> nn.Module:
    """Give every BatchNorm2d non-trivial statistics and affine terms (deterministic).

    A coupled channel that is not zeroed (or not removed) then leaks its BN bias downstream and
    shows in the outputs, which default-initialised BatchNorms would hide.
    """
    gen = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.weight.data = torch.rand(c, generator=gen) + 0.5
            m.bias.data = torch.randn(c, generator=gen) * 0.2
            m.running_mean = torch.randn(c, generator=gen) * 0.2
            m.running_var = torch.rand(c, generator=gen) + 0.5
    return net


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
