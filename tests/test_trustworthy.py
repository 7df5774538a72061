"""Trustworthy records and clean stops: moved sweep folders, signals, stale temporary files,
failed runs' log folders, the console summary, LRP options.

The sweeps here prune a freshly initialised ResNet-20 (a plain state_dict: no training) on a
3-class digits subset and time the torch backend once, so a point takes a few seconds.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torch import nn

from capl.cli import main
from capl.criteria import LRP
from capl.io import remove_stale_temp_files
from capl.models import build_network
from capl.sweep import read_results_csv
from capl.sweep.cli import sweep_main
from capl.sweep.grid import parse_sweep_config
from capl.sweep.preflight import instantiate
from capl.sweep.runner import RESULT_FILE
from tests.test_bad_input import BENCH, DATA

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def state_dict(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "resnet20.pt"
    torch.save(build_network("resnet20", 10, small_input=True).state_dict(), path)
    return path


def _sweep_file(folder: Path, weights: Path, ratios: list[float], **bench: Any) -> Path:
    config = {
        "name": "records",
        "base": {
            "network": "resnet20",
            "small_input": True,
            "num_classes": 10,
            "checkpoint": str(weights),
        },
        "data": copy.deepcopy(DATA),
        "grid": {"criteria": ["L1Norm"], "ratios": ratios},
        "benchmark": {**BENCH, **bench},
    }
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


# --------------------------------------------------------------------------------------------
# Records relative to the sweep folder


def _kill_during_atomic_write(target: Path) -> Path:
    """Start a writer that stalls inside an atomic write, kill -9 it; return its temp file."""
    code = textwrap.dedent(
        f"""
        import time
        from capl.io import _atomic
        def stall(handle):
            handle.write(b"half a file")
            handle.flush()
            time.sleep(60)
        _atomic({str(target)!r}, stall)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.monotonic() + 60
    while not list(target.parent.glob(f".{target.name}.*.tmp")):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.1)
    proc.kill()
    proc.wait()
    (temp,) = target.parent.glob(f".{target.name}.*.tmp")
    return temp


def test_moved_sweep_folder_merges_its_own_records(state_dict: Path, tmp_path: Path) -> None:
    config = _sweep_file(tmp_path, state_dict, [0.3])
    first = tmp_path / "first"
    assert sweep_main(["--config", str(config), "--output", str(first), "--no-plots"]) == 0
    (point,) = [p.name for p in (first / "points").iterdir()]
    record = json.loads((first / "points" / point / RESULT_FILE).read_text())
    assert record["benchmark_path"] == f"points/{point}/benchmark.json"  # relative

    # a copy whose benchmark.json differs: the merge of the copy must read the copy's file,
    # while the original folder still exists
    copied = tmp_path / "copied"
    shutil.copytree(first, copied)
    bench_path = copied / "points" / point / "benchmark.json"
    benchmark = json.loads(bench_path.read_text())
    benchmark["after"]["accuracy"] = 0.123456
    bench_path.write_text(json.dumps(benchmark))
    # a record written by older capl (absolute path into the original folder) too
    old = copy.deepcopy(record)
    old["benchmark_path"] = str(first / "points" / point / "benchmark.json")
    (copied / "points" / point / RESULT_FILE).write_text(json.dumps(old))
    # and a temporary file a killed writer left behind, next to one of a live writer
    stale = _kill_during_atomic_write(copied / "results.csv")
    live = copied / f".report.md.{os.getpid()}-{socket.gethostname()}.abcd1234.tmp"
    live.write_text("being written")

    merge = ["--merge", "--no-plots"]
    assert sweep_main(["--config", str(config), "--output", str(copied), *merge]) == 0
    (row,) = read_results_csv(copied / "results.csv")
    assert row["status"] == "ok" and row["after.accuracy"] == 0.123456
    (original,) = read_results_csv(first / "results.csv")
    assert original["after.accuracy"] != 0.123456
    assert not stale.exists() and live.exists()

    # moved away from the original (which is gone): still every row ok
    shutil.rmtree(first)
    moved = tmp_path / "moved"
    copied.rename(moved)
    assert sweep_main(["--config", str(config), "--output", str(moved), *merge]) == 0
    (row,) = read_results_csv(moved / "results.csv")
    assert row["status"] == "ok" and row["after.accuracy"] == 0.123456


# --------------------------------------------------------------------------------------------
# Signals


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_stops_the_sweep_and_leaves_the_running_points_unrecorded(
    state_dict: Path,
    tmp_path: Path,
    signum: int,
    code: int,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # both points are pruned first (latency deferred), then timed together in one group run of
    # at least 4 s per model: the signal lands inside that run
    config = _sweep_file(tmp_path, state_dict, [0.3, 0.5], min_time_s=4.0)
    out = tmp_path / "out"
    sweep = Path(sys.executable).with_name("capl-sweep")
    proc = subprocess.Popen(
        [str(sweep), "--config", str(config), "--output", str(out), "--no-plots"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 240
    while len(list(out.glob("points/*/benchmark.json"))) < 2:
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    time.sleep(2.0)  # inside the group run (three models, at least 4 s each)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=240)
    assert proc.returncode == code, stderr
    assert "capl-sweep: interrupted; rerun the same command to resume" in stderr.splitlines()
    assert "Traceback" not in stderr
    assert list(out.glob(f"points/*/{RESULT_FILE}")) == []  # not recorded as failed, nor ok
    for bench in out.glob("points/*/benchmark.json"):  # pruned, but their latency never came
        assert json.loads(bench.read_text())["after"]["latency_ms"] == {}
    assert not (out / "results.csv").exists()
    capsys.readouterr()
    assert sweep_main(["--config", str(config), "--output", str(out), "--dry-run"]) == 0
    assert capsys.readouterr().out.count("pending") == 2  # a rerun does both points


# --------------------------------------------------------------------------------------------
# capl runs: failed runs leave no empty log folder; the summary shows accuracies


def _run_config(tmp: Path, callbacks: list[dict]) -> Path:
    config = {
        "seed_everything": 0,
        "data": copy.deepcopy(DATA),
        "model": {"network": "resnet20", "small_input": True, "num_classes": 10},
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "logger": {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": str(tmp / "runs"), "name": "t"},
            },
            "callbacks": callbacks,
        },
    }
    path = tmp / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _pruning(**init_args: Any) -> dict:
    return {
        "class_path": "PruningCallback",
        "init_args": {"criterion": {"class_path": "L1Norm"}, "ratio": 0.3, **init_args},
    }


def test_failed_run_removes_only_its_own_empty_log_folder(state_dict: Path, tmp_path: Path) -> None:
    ok = _run_config(tmp_path, [_pruning()])
    assert main(["test", "--config", str(ok), "--model.weights", str(state_dict)]) is not None
    kept = sorted(p.name for p in (tmp_path / "runs" / "t").iterdir())
    assert kept == ["version_0"]
    bad = _run_config(tmp_path, [_pruning(ignore=["*"])])  # fails in setup, inside the run
    with pytest.raises(SystemExit) as exit_info:
        main(["test", "--config", str(bad), "--model.weights", str(state_dict)])
    assert exit_info.value.code == 2
    # no empty version_1 left behind; the earlier run's folder is untouched
    assert sorted(p.name for p in (tmp_path / "runs" / "t").iterdir()) == kept
    assert any((tmp_path / "runs" / "t" / "version_0").iterdir())


def test_console_summary_shows_base_and_pruned_accuracy(
    state_dict: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    output = tmp_path / "benchmark.json"
    bench = {"class_path": "BenchmarkCallback", "init_args": {**BENCH, "output": str(output)}}
    config = _run_config(tmp_path, [_pruning(), bench])
    with caplog.at_level(logging.INFO):
        main(["test", "--config", str(config), "--model.weights", str(state_dict)])
    result = json.loads(output.read_text())
    before, after = result["before"]["accuracy"], result["after"]["accuracy"]
    rows = [line.split() for line in caplog.text.splitlines()]
    (cells,) = [r for r in rows if len(r) > 1 and r[0] == "accuracy" and r[1][0].isdigit()]
    assert cells[1:3] == [f"{100 * before:.2f}", "%"] and cells[3:5] == [f"{100 * after:.2f}", "%"]
    assert cells[5] == f"{100 * (after - before):+.2f}"
    assert any(ln.lstrip().startswith("MACs (conv+linear)") for ln in caplog.text.splitlines())


# --------------------------------------------------------------------------------------------
# LRP options


class _BiasNet(nn.Module):
    """Conv-ReLU-conv-ReLU-pool-linear with positive biases everywhere."""

    def __init__(self, bn: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, 6, 3, padding=1)]
        if bn:
            layers.append(nn.BatchNorm2d(6))
        layers += [nn.ReLU(), nn.Conv2d(6, 5, 3, padding=1), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(5, 10)
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    m.bias.uniform_(0.2, 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


def _images() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(5)
    return torch.rand(4, 3, 6, 6), torch.tensor([0, 1, 2, 1])


ROWS = [3, 5, 8]


def _lrp_scores(crit: LRP, net: nn.Module) -> dict[str, torch.Tensor]:
    layers = {n: m for n, m in net.named_modules() if isinstance(m, nn.Conv2d)}
    return crit.score(net, layers, crit.collect(net, [_images()], layers, ROWS))


def test_lrp_ignores_biases_by_default_so_zplus_conserves_relevance() -> None:
    torch.manual_seed(0)
    net = _BiasNet().eval()
    x, y = _images()
    with torch.no_grad():
        start = net(x)[torch.arange(4), torch.tensor(ROWS)[y]].sum().double()
    assert start > 0
    default = _lrp_scores(LRP(rules="zplus"), net)
    for name, scores in default.items():  # every layer receives all of the relevance
        torch.testing.assert_close(scores.sum(), start, rtol=1e-4, atol=1e-6, msg=name)
    zennit_default = _lrp_scores(LRP(rules="zplus", zero_params=None), net)
    # with biases taking part (zennit's default) they absorb a visible share
    assert all(s.sum() < 0.99 * start for s in zennit_default.values())


def test_lrp_abs_aggregate_sums_magnitudes() -> None:
    torch.manual_seed(0)
    net = copy.deepcopy(build_network("resnet20", 10, small_input=True)).eval()
    signed = _lrp_scores(LRP(init="one"), net)
    absolute = _lrp_scores(LRP(init="one", aggregate="abs"), net)
    assert signed.keys() == absolute.keys()
    for name in signed:
        assert bool((absolute[name] >= signed[name].abs() - 1e-9).all()), name
    # the epsilon / z-beta rules hand some filters negative relevance: there the sums differ
    assert any(bool((absolute[n] > signed[n].abs() + 1e-6).any()) for n in signed)
    # where relevance is never negative (z+ on non-negative inputs from a positive start)
    # both sums agree exactly
    plain = _BiasNet().eval()
    summed = _lrp_scores(LRP(rules="zplus", init="one"), plain)
    magnitudes = _lrp_scores(LRP(rules="zplus", init="one", aggregate="abs"), plain)
    assert all(torch.equal(summed[n], magnitudes[n]) for n in summed)


def test_lrp_zplus_folds_batchnorm_first() -> None:
    torch.manual_seed(0)
    with_bn = _BiasNet(bn=True)
    bn = with_bn.features[1]
    with torch.no_grad():  # non-trivial statistics and affine parameters
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.1, 0.3)
    with_bn.eval()
    folded = _BiasNet()
    conv, merged = with_bn.features[0], folded.features[0]
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    with torch.no_grad():
        merged.weight.copy_(conv.weight * scale[:, None, None, None])
        merged.bias.copy_((conv.bias - bn.running_mean) * scale + bn.bias)
        folded.features[2].load_state_dict(with_bn.features[3].state_dict())
        folded.fc.load_state_dict(with_bn.fc.state_dict())
    folded.eval()
    x, _ = _images()
    torch.testing.assert_close(with_bn(x), folded(x))
    state = copy.deepcopy(with_bn.state_dict())
    got = _lrp_scores(LRP(rules="zplus"), with_bn)
    want = _lrp_scores(LRP(rules="zplus"), folded)
    # equal up to float32 rounding of the two folds
    torch.testing.assert_close(got["features.0"], want["features.0"], rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(got["features.3"], want["features.2"], rtol=1e-5, atol=1e-8)
    # the fold lives only inside collect(): the BatchNorm is back afterwards
    assert all(torch.equal(v, with_bn.state_dict()[k]) for k, v in state.items())


def test_sweep_docstring_example_builds_its_criteria() -> None:
    import capl.sweep.grid as grid
    from capl.criteria import Criterion

    block = grid.__doc__.split("::\n", 1)[1].split("\nEvery problem")[0]
    config = parse_sweep_config(yaml.safe_load(textwrap.dedent(block)))
    built = [
        instantiate({"class_path": c.class_path, "init_args": c.init_args}, Criterion, "example")
        for c in config.grid.criteria
    ]
    assert [type(c).__name__ for c in built] == ["OCAP", "LRP"]
    assert built[1].rules == "auto"


def test_stale_temp_files_of_other_hosts_wait_for_a_day(tmp_path: Path) -> None:
    other = tmp_path / ".results.csv.4242-elsewhere.abcd1234.tmp"
    other.write_text("x")
    assert remove_stale_temp_files(tmp_path) == [] and other.exists()
    day_old = time.time() - 25 * 3600
    os.utime(other, (day_old, day_old))
    assert remove_stale_temp_files(tmp_path) == [other] and not other.exists()
