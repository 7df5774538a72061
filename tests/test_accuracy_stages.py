"""Accuracy stages (base, pruned, BN-recalibrated, retrained), deployment input size, epochs."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from unittest import mock

import pytest
import torch

from capl.benchmark import count_conv_linear_macs
from capl.cli import main
from capl.datamodules import DigitsSubset
from capl.evaluation import evaluate_subset
from capl.models import build_network
from capl.module import ImageClassifier
from capl.pruning import PruningPlan, apply_plan, recalibrate_batchnorm
from tests.conftest import quiet_trainer
from tests.test_callbacks import FAST_BENCH, base_args, pruning_args, run_dir

ROWS = [3, 5, 8]


def _digits() -> DigitsSubset:
    data = DigitsSubset(classes=ROWS)
    data.setup("test")
    return data


def _pruned_base(digits_base: Path, plan: dict) -> torch.nn.Module:
    """The base network rebuilt from its checkpoint and pruned by the recorded plan."""
    network = ImageClassifier.load_from_checkpoint(digits_base).network
    apply_plan(network, PruningPlan.from_dict(plan))
    return network


def test_recalibration_resets_and_reestimates_only_bn_statistics() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(), torch.nn.Dropout(0.5)
    )
    weights = copy.deepcopy(net.state_dict())
    batches = [(torch.randn(8, 3, 6, 6) * 3 + 1, torch.zeros(8)) for _ in range(3)]
    net.eval()
    used = recalibrate_batchnorm(net, iter(batches), num_batches=2)
    assert used == 2
    # the cumulative average over the two batches' per-batch means, as momentum=None defines
    with torch.no_grad():
        conv = [net[0](x) for x, _ in batches[:2]]
    expected_mean = torch.stack([c.mean(dim=(0, 2, 3)) for c in conv]).mean(0)
    torch.testing.assert_close(net[1].running_mean, expected_mean)
    assert int(net[1].num_batches_tracked) == 2
    assert not net.training and not net[1].training  # modes restored
    assert net[1].momentum == 0.1
    for key in ("0.weight", "0.bias", "1.weight", "1.bias"):
        assert torch.equal(net.state_dict()[key], weights[key])
    assert recalibrate_batchnorm(net, iter(batches), num_batches=0) == 0


def test_prune_only_stages_match_independent_evaluation(digits_base: Path, tmp_path: Path) -> None:
    cli = main(
        [
            "test",
            *base_args(digits_base),
            *pruning_args("L1Norm", ratio=0.5),
            "--trainer.callbacks.bn_recalibration=4",
            *FAST_BENCH,
        ]
        + quiet_trainer(tmp_path, "stages")
    )
    folder = run_dir(cli)
    result = json.loads((folder / "benchmark.json").read_text())
    plan = json.loads((folder / "pruning_plan.json").read_text())
    stages = result["accuracy_stages"]
    assert set(stages) == {"chance", "base", "pruned", "bn_recalibrated"}
    assert stages["chance"] == pytest.approx(1 / 3)
    assert result["retrain_epochs"] == 0 and result["best_epoch"] is None

    data = _digits()
    names = data.class_names
    base = ImageClassifier.load_from_checkpoint(digits_base).network
    base_acc = evaluate_subset(base, data.test_dataloader(), ROWS, names)
    assert stages["base"]["accuracy"] == pytest.approx(base_acc["accuracy"])

    pruned = _pruned_base(digits_base, plan)  # head cut to the 3 rows: rows 0..2
    pruned_acc = evaluate_subset(pruned, data.test_dataloader(), [0, 1, 2], names)
    assert stages["pruned"]["accuracy"] == pytest.approx(pruned_acc["accuracy"])
    assert stages["pruned"]["accuracy_per_class"] == pytest.approx(pruned_acc["accuracy_per_class"])

    recalibrate_batchnorm(pruned, data.train_dataloader(), 4)
    recal_acc = evaluate_subset(pruned, data.test_dataloader(), [0, 1, 2], names)
    assert stages["bn_recalibrated"]["accuracy"] == pytest.approx(recal_acc["accuracy"])
    assert stages["bn_recalibrated"]["batches"] == 4
    # the model under test is the recalibrated one
    assert result["after"]["accuracy"] == pytest.approx(recal_acc["accuracy"])
    # L1Norm at half the MACs wrecks the uncalibrated statistics; recalibration repairs them
    assert stages["bn_recalibrated"]["accuracy"] > stages["pruned"]["accuracy"]


def test_prune_only_benchmark_reuses_the_last_stage_evaluation(
    digits_base: Path, tmp_path: Path
) -> None:
    import capl.callbacks.benchmark as bench_module
    from capl.callbacks import PruningCallback

    with mock.patch.object(
        bench_module, "evaluate_subset", wraps=bench_module.evaluate_subset
    ) as measured:
        cli = main(
            [
                "test",
                *base_args(digits_base),
                *pruning_args("L1Norm", ratio=0.5),
                "--trainer.callbacks.bn_recalibration=2",
                *FAST_BENCH,
            ]
            + quiet_trainer(tmp_path, "reuse")
        )
    assert measured.call_count == 1  # the base only: the pruned model was measured in setup
    result = json.loads((run_dir(cli) / "benchmark.json").read_text())
    recalibrated = dict(result["accuracy_stages"]["bn_recalibrated"])
    assert recalibrated.pop("batches") == 2
    after = {key: result["after"][key] for key in recalibrated}
    assert after == recalibrated

    pruning = next(cb for cb in cli.trainer.callbacks if isinstance(cb, PruningCallback))
    module, data = cli.model, cli.datamodule
    assert module.rows == [0, 1, 2]
    assert pruning.known_accuracy(module, data, "cpu") == after
    assert pruning.known_accuracy(module, _digits(), "cpu") is None  # other data
    module.rows = [0, 2, 1]
    assert pruning.known_accuracy(module, data, "cpu") is None  # other rows
    module.rows = [0, 1, 2]
    with torch.no_grad():
        next(module.network.parameters()).view(-1)[0] += 1e-3  # one weight changed
    assert pruning.known_accuracy(module, data, "cpu") is None


def test_retrained_stages_and_epochs_through_a_checkpoint(
    digits_base: Path, tmp_path: Path
) -> None:
    common = [
        *base_args(digits_base),
        *pruning_args("L1Norm", ratio=0.5),
        "--trainer.callbacks.bn_recalibration=2",
        "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
        "--trainer.callbacks.monitor=val/acc",
        "--trainer.callbacks.mode=max",
        "--trainer.callbacks.filename=best",
        *FAST_BENCH,
        "--trainer.max_epochs=3",
    ]
    cli = main(["fit", *common] + quiet_trainer(tmp_path, "retrain"))
    assert cli.model.retrain_epochs == 3
    best = cli.trainer.checkpoint_callback.best_model_path
    best_epoch = torch.load(best, weights_only=True)["epoch"] + 1
    # as the sweep does: the fit's trainer tests the best checkpoint
    cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=best)
    result = json.loads((run_dir(cli) / "benchmark.json").read_text())
    assert result["retrain_epochs"] == 3
    assert result["best_epoch"] == best_epoch
    stages = result["accuracy_stages"]
    assert set(stages) == {"chance", "base", "pruned", "bn_recalibrated", "retrained"}
    assert stages["retrained"]["accuracy"] == pytest.approx(result["after"]["accuracy"])

    # a fresh process testing the checkpoint uses its plan (no new selection) and its stages
    test = main(["test", *common, "--ckpt_path", best] + quiet_trainer(tmp_path, "retest"))
    again = json.loads((run_dir(test) / "benchmark.json").read_text())
    assert again["accuracy_stages"]["pruned"] == stages["pruned"]
    assert again["accuracy_stages"]["retrained"]["accuracy"] == pytest.approx(
        stages["retrained"]["accuracy"]
    )
    assert again["retrain_epochs"] == best_epoch  # all a lone checkpoint can tell
    assert again["timings_s"]["selection"] == result["timings_s"]["selection"]
    assert not (run_dir(test) / "pruning_plan.json").exists()  # nothing was re-planned


def test_benchmark_input_size_measures_at_deployment_resolution(
    digits_base: Path, tmp_path: Path
) -> None:
    cli = main(
        [
            "test",
            *base_args(digits_base),
            *pruning_args("L1Norm", ratio=0.5),
            *FAST_BENCH,
            "--trainer.callbacks.input_size=[3, 32, 32]",
        ]
        + quiet_trainer(tmp_path, "size")
    )
    result = json.loads((run_dir(cli) / "benchmark.json").read_text())
    assert result["input_shape"] == {"accuracy": [3, 8, 8], "benchmark": [3, 32, 32]}
    base = build_network("resnet20", 10, small_input=True, weights=str(digits_base))
    macs_32 = count_conv_linear_macs(base, (3, 32, 32))
    macs_8 = count_conv_linear_macs(base, (3, 8, 8))
    assert result["before"]["conv_linear_macs"] == macs_32
    assert macs_32 > 10 * macs_8  # 16x the positions of the convs; the head does not scale


def test_bad_stage_options_are_one_line_errors() -> None:
    from capl.callbacks import BenchmarkCallback, PruningCallback
    from capl.criteria import L1Norm
    from capl.errors import ConfigError

    with pytest.raises(ConfigError, match="bn_recalibration must be >= 0"):
        PruningCallback(L1Norm(), bn_recalibration=-1)
    with pytest.raises(ConfigError, match=r"input_size must be \[C, H, W\]"):
        BenchmarkCallback(input_size=[32, 32])
    with pytest.raises(ConfigError, match=r"rounds must be >= 1 \(or null"):
        BenchmarkCallback(rounds=0)
    assert BenchmarkCallback().rounds is None  # one alternating round per timed run


def test_aux_heads_train_with_weighted_aux_loss() -> None:
    module = ImageClassifier("googlenet", num_classes=10, aux_loss_weight=0.5)
    module.configure_task([3, 5, 8])
    net = module.network
    net.train()
    images, labels = torch.randn(2, 3, 64, 64), torch.tensor([0, 2])
    torch.manual_seed(0)
    loss, logits, _ = module._shared_step((images, labels))
    assert logits.shape == (2, 3)
    torch.manual_seed(0)  # same dropout draws
    out = net(images)
    ce = torch.nn.functional.cross_entropy
    expected = ce(out.logits[:, [3, 5, 8]], labels) + 0.5 * (
        ce(out.aux_logits1[:, [3, 5, 8]], labels) + ce(out.aux_logits2[:, [3, 5, 8]], labels)
    )
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert net.aux1.fc2.weight.grad is not None
