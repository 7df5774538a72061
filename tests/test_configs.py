"""Every YAML file in configs/ through the real CLI, on tiny data, in seconds each.

Runs happen in a scratch working folder holding tiny datasets written in the real on-disk
formats at the configs' own relative roots (``data/cifar10``, ``data/gtsrb``, ...), so the
configs run unchanged except for the overrides each case names: fewer batches, images and
repeats, a small network where the config's choice is not the point, and no pretrained weights
(none can be downloaded here). ``default.yaml`` trains the base model that the ``runs/``
configs then read from the path they name. Fashion-MNIST is read from Debian's real files when
installed. GPU trainer configs are parsed everywhere and run only where CUDA is.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torch import nn

from capl.cli import CaplCLI, main
from capl.datamodules import IMAGENET_SUBSETS
from capl.datamodules.imagenet import imagenet_classes
from capl.models import build_network, find_classifier
from capl.sweep import read_results_csv
from capl.sweep.cli import sweep_main
from capl.sweep.config import apply_overrides
from capl.sweep.grid import expand_grid, load_sweep_config
from tests.conftest import CONFIGS
from tests.fixtures_data import (
    cifar_checksums_skipped,
    write_cifar10,
    write_cifar100,
    write_fashion_mnist,
    write_gtsrb,
    write_imagenet,
)

DEFAULT = CONFIGS / "default.yaml"
TINY = CONFIGS / "debug" / "tiny.yaml"
FAST = CONFIGS / "debug" / "fast_dev_run.yaml"
FASHION_ROOT = Path("/usr/share/datasets/fashion-mnist")  # configs/data/fashion_mnist.yaml's
TRAIN_PER_CLASS = 24  # debug/tiny.yaml keeps 20 per class after carving validation
pytestmark = pytest.mark.usefixtures("one_thread")  # tiny convs: faster on one thread
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
#: One timed batch-1 torch forward: what a benchmark cell costs, not what it measures.
TINY_BENCH = {
    "batch_sizes": [1],
    "backends": ["torch"],
    "warmup": 0,
    "repeats": 1,
    "min_time_s": 0.0,
    "rounds": 1,
}
CUDA = torch.cuda.is_available()


def _fashion(root: Path) -> None:
    write_fashion_mnist(root, TRAIN_PER_CLASS, 3, layout="flat", compressed=True)


#: Tiny datasets by the root folder the configs name (relative to the working folder).
WRITERS = {
    "data/cifar10": lambda root: write_cifar10(root, TRAIN_PER_CLASS, 3),
    "data/cifar100": lambda root: write_cifar100(
        root, _cifar100_names(), range(100), TRAIN_PER_CLASS, 2
    ),
    "data/gtsrb": lambda root: write_gtsrb(root, range(43), TRAIN_PER_CLASS, 2),
    "data/imagenet": lambda root: _write_imagenet(root),
    "fashion": _fashion,
}


def _cifar100_names() -> list[str]:
    from capl.datamodules import CIFAR100Subset

    return CIFAR100Subset.all_class_names()


def _write_imagenet(root: Path) -> None:
    wnids = [*IMAGENET_SUBSETS["similar"], *IMAGENET_SUBSETS["distinct"]]
    wnids += imagenet_classes()[0][:2]  # tench, goldfish
    for start in range(0, len(wnids), 4):  # the writer codes at most four classes per call
        write_imagenet(root, wnids[start : start + 4], TRAIN_PER_CLASS, 2)


class Workdir:
    """The scratch working folder; writes each tiny dataset the first time a case needs it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.written: set[str] = set()

    def data(self, root: str) -> Path:
        """The folder of dataset ``root`` (a key of :data:`WRITERS`), written once."""
        folder = self.path / ("fashion" if root == "fashion" else root)
        if root not in self.written:
            WRITERS[root](folder)
            self.written.add(root)
        return folder

    def fashion_root(self) -> list[str]:
        """CLI override of Fashion-MNIST's root: none when Debian's real files are installed."""
        if FASHION_ROOT.is_dir():
            return []
        return ["--data.root", str(self.data("fashion"))]


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workdir]:
    """Run every case of this file inside one scratch folder (the configs' relative paths)."""
    path = tmp_path_factory.mktemp("configs")
    with pytest.MonkeyPatch.context() as patch, cifar_checksums_skipped():
        patch.chdir(path)
        yield Workdir(path)


def capl(*args: str | Path) -> CaplCLI:
    """``capl ARGS`` in process (what the console script runs), quiet."""
    cli = main([str(a) for a in args] + QUIET)
    assert cli is not None
    return cli


def configs(*names: str) -> list[str]:
    """``--config`` arguments for files under configs/."""
    return [item for name in names for item in ("--config", str(CONFIGS / name))]


def tiny_copy(work: Workdir, name: str, benchmark: dict[str, Any] = TINY_BENCH) -> Path:
    """A copy of run config ``name`` whose BenchmarkCallback times one batch-1 torch forward.

    A list item's ``init_args`` cannot be reached from the command line, hence the copy.
    """
    raw = yaml.safe_load((CONFIGS / name).read_text())
    for callback in raw["trainer"]["callbacks"]:
        if callback["class_path"].endswith("BenchmarkCallback"):
            callback["init_args"] = {**(callback.get("init_args") or {}), **benchmark}
    path = work.path / "tiny_configs" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def checkpoints(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").glob("*.ckpt"))


def classifier_rows(network: nn.Module) -> int:
    layer = find_classifier(network)[1]
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


# ----------------------------------------------------------------------------- default.yaml


@pytest.fixture(scope="module")
def base(work: Workdir) -> Path:
    """``capl fit --config configs/default.yaml`` (one tiny epoch): the runs' base checkpoint."""
    cli = capl("fit", *configs("default.yaml", "debug/tiny.yaml"))
    run = work.path / "runs" / "digits_resnet18" / "base"  # where default.yaml says it goes
    assert checkpoints(run) == ["best.ckpt", "last.ckpt"]
    assert cli.trainer.current_epoch == 1 and cli.trainer.global_step == 3  # tiny.yaml's limits
    assert cli.model.hparams["network"] == "resnet18" and classifier_rows(cli.model.network) == 10
    return run / "checkpoints" / "best.ckpt"


def test_default_trains_the_base_model_where_the_run_configs_read_it(base: Path) -> None:
    blob = torch.load(base, map_location="cpu", weights_only=True)
    assert blob["hyper_parameters"]["network"] == "resnet18"
    assert blob["state_dict"]["network.fc.weight"].shape[0] == 10


# ----------------------------------------------------------------------------- data/

PX32 = ["--data.image_size", "32"]  # 32 px instead of ImageNet's 224: seconds, not minutes

#: data config -> (root it reads, CLI overrides, the classes it selects in index order or None)
DATA_CASES: dict[str, tuple[str | None, list[str], list[int] | None]] = {
    "digits.yaml": (None, [], list(range(10))),
    "cifar10.yaml": ("data/cifar10", [], list(range(10))),
    "cifar100.yaml": ("data/cifar100", [], list(range(100))),
    "fashion_mnist.yaml": ("fashion", [], list(range(10))),
    "gtsrb.yaml": ("data/gtsrb", [], list(range(43))),
    # ImageNet images are cut to 32 px crops; all 1000 classes would need 1000 folders
    "imagenet.yaml": ("data/imagenet", [*PX32, "--data.classes", "[0, 1]"], [0, 1]),
    "imagenet_similar.yaml": ("data/imagenet", PX32, None),
    "imagenet_distinct.yaml": ("data/imagenet", PX32, None),
}


@pytest.mark.parametrize("name", sorted(DATA_CASES))
def test_data_config_trains(work: Workdir, name: str) -> None:
    root, overrides, expected = DATA_CASES[name]
    if root == "fashion":
        overrides = work.fashion_root()
    elif root is not None:
        work.data(root)
    stem = name.removesuffix(".yaml")
    cli = capl(
        "fit",
        *configs("default.yaml", f"data/{name}", "debug/tiny.yaml"),
        *("--model.network", "resnet20", "--data.num_workers", "0", "--data.batch_size", "16"),
        *("--trainer.logger.init_args.name", stem, *overrides),
    )
    declared = yaml.safe_load((CONFIGS / "data" / name).read_text())["data"]
    data = cli.datamodule
    assert type(data).__name__ == declared["class_path"].rsplit(".", 1)[1]
    if expected is None:  # a named ImageNet subset, in its own order
        wnids = imagenet_classes()[0]
        expected = [wnids.index(w) for w in IMAGENET_SUBSETS[declared["init_args"]["classes"]]]
    assert data.class_indices == expected
    assert cli.model.head_classes == expected
    assert classifier_rows(cli.model.network) == len(expected)
    assert cli.trainer.global_step == 3
    assert checkpoints(work.path / "runs" / stem / "base") == ["best.ckpt", "last.ckpt"]


# ----------------------------------------------------------------------------- model/

#: model config -> (CLI overrides, head rows, first conv stride, BatchNorm layers present)
MODEL_CASES: dict[str, tuple[list[str], int, int, bool]] = {
    "resnet18_small.yaml": ([], 10, 1, True),
    "vgg16_bn_small.yaml": ([], 10, 1, True),
    # no pretrained weights can be had here; the networks are the configs' own at 32 px
    "resnet18_imagenet.yaml": (["--model.weights", "null", *PX32], 1000, 2, True),
    "vgg16_imagenet.yaml": (["--model.weights", "null", *PX32], 1000, 1, False),
}


@pytest.mark.parametrize("name", sorted(MODEL_CASES))
def test_model_config_takes_a_training_step(work: Workdir, name: str) -> None:
    overrides, rows, stride, batchnorm = MODEL_CASES[name]
    declared = yaml.safe_load((CONFIGS / "model" / name).read_text())["model"]
    cli = capl(
        "fit",
        *configs("default.yaml", f"model/{name}", "debug/fast_dev_run.yaml"),
        *("--data.batch_size", "8", "--trainer.logger.init_args.name", name, *overrides),
    )
    network = cli.model.network
    assert cli.model.hparams["network"] == declared["network"]
    assert classifier_rows(network) == rows
    first = next(m for m in network.modules() if isinstance(m, nn.Conv2d))
    assert first.stride == (stride, stride)
    assert any(isinstance(m, nn.BatchNorm2d) for m in network.modules()) == batchnorm
    (optimizer,) = cli.trainer.optimizers
    assert optimizer.defaults["lr"] == declared["optimizer"]["init_args"]["lr"]
    assert cli.trainer.global_step == 1  # fast_dev_run: one training batch, then validation
    assert torch.isfinite(cli.trainer.callback_metrics["val/loss"])


# ----------------------------------------------------------------------------- trainer/, debug/


def printed_config(args: Sequence[str], capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--print_config"])
    assert exit_info.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


def test_cpu_trainer_config_trains(work: Workdir) -> None:
    cli = capl(
        "fit",
        *configs("default.yaml", "trainer/cpu.yaml", "debug/tiny.yaml"),
        *("--model.network", "resnet20", "--trainer.logger.init_args.name", "trainer_cpu"),
    )
    assert cli.trainer.max_epochs == 1 and cli.trainer.global_step == 3  # tiny.yaml wins
    assert type(cli.trainer.accelerator).__name__ == "CPUAccelerator"
    assert checkpoints(work.path / "runs" / "trainer_cpu" / "base") == ["best.ckpt", "last.ckpt"]


@pytest.mark.parametrize(
    ("name", "devices", "strategy"),
    [("gpu.yaml", 1, "auto"), ("ddp.yaml", 4, "ddp"), ("ddp_cpu.yaml", 2, "ddp")],
)
def test_multi_device_trainer_configs_parse(
    name: str, devices: int, strategy: str, capsys: pytest.CaptureFixture[str]
) -> None:
    printed = printed_config(["fit", *configs("default.yaml", f"trainer/{name}")], capsys)
    trainer = printed["trainer"]
    declared = yaml.safe_load((CONFIGS / "trainer" / name).read_text())["trainer"]
    assert {k: trainer[k] for k in declared} == declared
    assert trainer["devices"] == devices and trainer["strategy"] == strategy


@pytest.mark.skipif(not CUDA, reason="configs/trainer/gpu.yaml needs a CUDA GPU")
def test_gpu_trainer_config_trains(work: Workdir) -> None:
    cli = capl(
        "fit",
        *configs("default.yaml", "trainer/gpu.yaml", "debug/tiny.yaml"),
        *("--model.network", "resnet20", "--trainer.logger.init_args.name", "trainer_gpu"),
    )
    assert type(cli.trainer.accelerator).__name__ == "CUDAAccelerator"
    assert cli.trainer.precision == "16-mixed" and cli.trainer.global_step == 3
    assert checkpoints(work.path / "runs" / "trainer_gpu" / "base") == ["best.ckpt", "last.ckpt"]


@pytest.mark.skipif(
    torch.cuda.device_count() < 4, reason="configs/trainer/ddp.yaml needs 4 CUDA GPUs"
)
def test_ddp_trainer_config_trains(work: Workdir) -> None:
    _ddp_run(work, "trainer/ddp.yaml", "trainer_ddp")


@pytest.mark.slow
def test_ddp_cpu_trainer_config_trains(work: Workdir) -> None:
    _ddp_run(work, "trainer/ddp_cpu.yaml", "trainer_ddp_cpu")


def _ddp_run(work: Workdir, name: str, run: str) -> None:
    # DDP starts one process per device by re-running the command line: the console script
    env = dict(os.environ, PYTHONPATH=str(CONFIGS.parent), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("capl")), "fit"]
        + configs("default.yaml", name, "debug/tiny.yaml")
        + ["--model.network", "resnet20", "--trainer.logger.init_args.name", run, *QUIET],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=work.path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert checkpoints(work.path / "runs" / run / "base") == ["best.ckpt", "last.ckpt"]


def test_fast_dev_run_config_takes_one_step(work: Workdir) -> None:
    cli = capl("fit", *configs("default.yaml", "debug/fast_dev_run.yaml"), "--model.network",
               "resnet20", "--trainer.logger.init_args.name", "fast")  # fmt: skip
    assert cli.trainer.global_step == 1
    assert cli.trainer.fast_dev_run is True and cli.trainer.num_val_batches == [1]


# ----------------------------------------------------------------------------- runs/


def benchmark_record(run: Path) -> dict[str, Any]:
    return json.loads((run / "benchmark.json").read_text())


def test_base_test_config_benchmarks_the_base_model(work: Workdir, base: Path) -> None:
    capl("test", "--config", tiny_copy(work, "runs/base_test.yaml"), "--config", TINY)
    record = benchmark_record(work.path / "runs" / "base_test" / "version_0")
    assert record["criterion"] is None and record["ratio"] is None
    assert record["model"] == "resnet18" and record["dataset"] == "digits"
    assert record["classes"]["indices"] == [3, 5, 8]
    assert set(record["before"]["latency_ms"]["torch"]) == {"bs1"}
    assert 0.0 <= record["accuracy_stages"]["base"]["accuracy"] <= 1.0


def test_prune_test_config_prunes_half_the_macs(work: Workdir, base: Path) -> None:
    cli = capl("test", "--config", tiny_copy(work, "runs/prune_test.yaml"), "--config", TINY)
    run = work.path / "runs" / "prune_test" / "version_0"
    record = benchmark_record(run)
    assert record["criterion"] == {"name": "OCAP", "negative_slope": 0.01}
    assert (record["ratio"], record["scope"], record["target"]) == (0.5, "global", "macs")
    assert record["classes"]["indices"] == [3, 5, 8]
    assert record["realised"]["conv_linear_macs_removed"] == pytest.approx(0.5, abs=0.02)
    assert classifier_rows(cli.model.network) == 3  # cut_head: true
    assert json.loads((run / "pruning_plan.json").read_text())["head_rows"] == [3, 5, 8]


def test_prune_retrain_config_fits_then_tests_its_checkpoint(work: Workdir, base: Path) -> None:
    config = tiny_copy(work, "runs/prune_retrain.yaml")
    capl("fit", "--config", config, "--config", TINY)
    run = work.path / "runs" / "prune_retrain" / "ocap_macs50"  # the folder the config fixes
    assert "best.ckpt" in checkpoints(run)
    # the second command of the config's header: test the retrained checkpoint
    capl("test", "--config", config, "--ckpt_path", run / "checkpoints" / "best.ckpt")
    record = benchmark_record(run)
    assert record["criterion"]["name"] == "OCAP" and record["target"] == "macs"
    assert record["retrain_epochs"] == 1 and record["classes"]["indices"] == [3, 5, 8]
    assert {"base", "pruned", "retrained"} <= set(record["accuracy_stages"])


# ----------------------------------------------------------------------------- experiments/

EXPERIMENTS = sorted((CONFIGS / "experiments").glob("*.yaml"))
SWEEPS = [p for p in EXPERIMENTS if not p.name.startswith("sensitivity")]
#: Sweeps that train a ResNet-56, read all 43 GTSRB classes or prune ImageNet networks (the
#: VGG-16s hold 138M parameters): the slowest on a shared two-core machine, run with -m slow.
HEAVY = {
    "cifar10_resnet56.yaml",
    "gtsrb_resnet20.yaml",
    "imagenet_distinct_resnet18.yaml",
    "imagenet_distinct_vgg16.yaml",
    "imagenet_similar_resnet18.yaml",
    "imagenet_similar_vgg16.yaml",
}


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.name)
def test_experiment_config_parses(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if path.name.startswith("sensitivity"):
        from capl.sensitivity import load_sensitivity_config

        assert load_sensitivity_config(path).ratios
        return
    points, _ = expand_grid(load_sweep_config(path))
    assert points
    assert sweep_main(["--config", str(path), "--output", "/nonexistent/x", "--dry-run"]) == 0
    assert capsys.readouterr().out.startswith(f"{len(points)} points")


def tiny_sweep(work: Workdir, raw: dict[str, Any]) -> list[str]:
    """``--set`` overrides that shrink a sweep to its first criterion and ratio, one seed."""
    sets = [
        f"grid.criteria=[{json.dumps(raw['grid']['criteria'][0])}]",
        f"grid.ratios=[{raw['grid']['ratios'][0]}]",
        "grid.seeds=[0]",
        "grid.retrain_epochs=[0]",
        f"benchmark={json.dumps({**raw.get('benchmark', {}), **TINY_BENCH})}",
        "data.init_args.num_workers=0",
        "data.init_args.batch_size=16",
        "data.init_args.samples_per_class=20",
        "data.init_args.test_samples_per_class=2",
        "data.init_args.calibration_samples_per_class=4",
    ]
    latency = raw.get("pruning", {}).get("latency")
    if latency is not None:  # one timed run per table entry: the table is not what is tested
        sets.append(f"pruning.latency={json.dumps({**latency, 'warmup': 0, 'repeats': 1})}")
    init = raw["data"]["init_args"]
    if init.get("root") == str(FASHION_ROOT) and not FASHION_ROOT.is_dir():
        sets.append(f"data.init_args.root={work.data('fashion')}")
    elif init.get("root", "").startswith("data/"):
        work.data(init["root"])
    if raw["data"]["class_path"].endswith("ImageNetSubset"):
        sets.append("data.init_args.image_size=32")
    train = raw["base"].get("train")
    if train is not None:
        sets.append("base.train.max_epochs=1")
        sets += ["base.train.trainer={limit_train_batches: 3, limit_val_batches: 2}"]
        if "samples_per_class" in train.get("data", {}):
            sets.append("base.train.data.samples_per_class=20")
    else:  # a torchvision weights name: no download here, so random weights of that network
        path = work.path / f"{raw['base']['network']}_{raw['base']['num_classes']}.pt"
        if not path.is_file():
            network = build_network(raw["base"]["network"], raw["base"]["num_classes"])
            torch.save(network.state_dict(), path)
        sets.append(f"base.checkpoint={path}")
    if raw.get("trainer", {}).get("accelerator") == "gpu" and not CUDA:
        sets.append("trainer.accelerator=cpu")
    return sets


@pytest.mark.parametrize(
    "path",
    [pytest.param(p, marks=[pytest.mark.slow] if p.name in HEAVY else []) for p in SWEEPS],
    ids=lambda p: p.name,
)
def test_experiment_sweep_runs(work: Workdir, path: Path) -> None:
    out = work.path / "sweeps" / path.stem
    raw = yaml.safe_load(path.read_text())
    sets = tiny_sweep(work, raw)
    points, _ = expand_grid(load_sweep_config(path, sets))
    args = ["--config", str(path), "--output", str(out), "--no-plots"]
    assert sweep_main([*args, *(item for s in sets for item in ("--set", s))]) == 0
    rows = read_results_csv(out / "results.csv")
    assert [r["point_id"] for r in rows] == [p.point_id for p in points]
    assert {r["status"] for r in rows} == {"ok"}
    first = raw["grid"]["criteria"][0]
    name = first if isinstance(first, str) else first["class_path"]
    assert {r["criterion.name"] for r in rows} == {name}
    for row, point in zip(rows, points, strict=True):
        record = json.loads((out / "points" / row["point_id"] / "benchmark.json").read_text())
        if isinstance(point.classes, list) and all(isinstance(c, int) for c in point.classes):
            assert record["classes"]["indices"] == point.classes
        assert len(record["classes"]["indices"]) == len(set(record["classes"]["names"])) > 1
        assert record["ratio"] == raw["grid"]["ratios"][0]


def test_sensitivity_experiment_runs(work: Workdir) -> None:
    path = CONFIGS / "experiments" / "sensitivity_digits.yaml"
    raw = yaml.safe_load(path.read_text())
    tiny = apply_overrides(
        raw,
        [
            "ratios=[0.5]",
            "base.train.max_epochs=1",
            "base.train.trainer={limit_train_batches: 3, limit_val_batches: 2}",
            "data.init_args.samples_per_class=20",
        ],
    )
    copy = work.path / "tiny_configs" / path.name
    copy.parent.mkdir(parents=True, exist_ok=True)
    copy.write_text(yaml.safe_dump(tiny, sort_keys=False))
    out = work.path / "sensitivity"
    from capl.sensitivity.cli import main as sensitivity_main

    assert sensitivity_main(["--config", str(copy), "--output", str(out)]) == 0
    suggestion = json.loads((out / "suggestion.json").read_text())
    with (out / "sensitivity.csv").open() as handle:
        scanned = {line.split(",")[0] for line in list(handle)[1:]}
    assert set(suggestion["layer_ratios"]) <= scanned and len(scanned) > 1
    (suggested,) = yaml.safe_load((out / "suggested_pruning.yaml").read_text())  # one list item
    assert suggested["class_path"] == "capl.callbacks.PruningCallback"
    assert suggested["init_args"]["criterion"]["class_path"].endswith(raw["criterion"])
    assert suggested["init_args"]["layer_ratios"] == suggestion["layer_ratios"]


# ----------------------------------------------------------------------------- coverage


COVERED = (
    {DEFAULT, TINY, FAST}
    | {CONFIGS / "data" / n for n in DATA_CASES}
    | {CONFIGS / "model" / n for n in MODEL_CASES}
    | {CONFIGS / "trainer" / n for n in ("cpu.yaml", "gpu.yaml", "ddp.yaml", "ddp_cpu.yaml")}
    | {CONFIGS / "runs" / n for n in ("base_test.yaml", "prune_test.yaml", "prune_retrain.yaml")}
    | set(EXPERIMENTS)
)


def test_every_config_file_has_a_case() -> None:
    assert sorted(set(CONFIGS.rglob("*.yaml")) - COVERED) == []
