"""The real `capl` CLI end to end on digits: fit, test from a checkpoint, subsets, errors, seeds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
from lightning.pytorch import Trainer

from capl.cli import CaplCLI, main
from capl.datamodules import DigitsSubset
from capl.errors import ConfigError
from capl.evaluation import accuracy_from_confusion, confusion_matrix, target_rows
from capl.module import ImageClassifier
from tests.conftest import CONFIGS, quiet_trainer

DEFAULT = str(CONFIGS / "default.yaml")


def test_test_from_checkpoint_reproduces_accuracy(digits_base: Path, tmp_path: Path) -> None:
    args = ["test", "--config", DEFAULT, "--model.network", "resnet20"]
    args += ["--ckpt_path", str(digits_base), *quiet_trainer(tmp_path, "t")]
    first = main(args)
    second = main(args)
    acc = float(first.trainer.callback_metrics["test/acc"])
    assert acc >= 0.90  # ten digits after three epochs
    assert float(second.trainer.callback_metrics["test/acc"]) == acc
    # the Lightning metric agrees with a plain count over the same test split
    model = ImageClassifier.load_from_checkpoint(digits_base)
    data = DigitsSubset()
    data.setup("test")
    counts = confusion_matrix(model.network, data.test_dataloader(), list(range(10)))
    assert accuracy_from_confusion(counts)["accuracy"] == pytest.approx(acc, abs=1e-6)


def test_full_head_model_is_scored_on_the_subset_task(digits_base: Path, tmp_path: Path) -> None:
    classes = [8, 3, 5]
    cli = main(
        ["test", "--config", DEFAULT, "--model.network", "resnet20", "--model.num_classes", "10"]
        + ["--data.classes", "[8, 3, 5]", "--ckpt_path", str(digits_base)]
        + quiet_trainer(tmp_path, "t")
    )
    model = ImageClassifier.load_from_checkpoint(digits_base)
    data = DigitsSubset(classes=classes)
    data.setup("test")
    rows = target_rows(list(range(10)), classes)
    assert rows == [8, 3, 5]
    expected = accuracy_from_confusion(
        confusion_matrix(model.network, data.test_dataloader(), rows)
    )
    metrics = cli.trainer.callback_metrics
    assert float(metrics["test/acc"]) == pytest.approx(expected["accuracy"], abs=1e-6)
    assert float(metrics["test/acc_class/8"]) == pytest.approx(expected["accuracy_per_class"][0])


def test_three_class_subset_trains_a_three_row_head(tmp_path: Path) -> None:
    cli = main(
        ["fit", "--config", DEFAULT, "--model.network", "resnet20", "--data.classes", "[3, 5, 8]"]
        + ["--trainer.max_epochs", "3", "--model.lr_scheduler.init_args.T_max", "3"]
        + ["--data.batch_size", "16"]  # ~400 training images: more, smaller steps
        + quiet_trainer(tmp_path, "fit3")
    )
    model = cli.model
    assert model.head_classes == [3, 5, 8]
    assert model.network.fc.out_features == 3
    tested = main(
        ["test", "--config", DEFAULT, "--model.network", "resnet20", "--data.classes", "[3, 5, 8]"]
        + ["--ckpt_path", cli.trainer.checkpoint_callback.best_model_path]
        + quiet_trainer(tmp_path, "test3")
    )
    assert float(tested.trainer.callback_metrics["test/acc"]) >= 0.90


def test_same_seed_gives_identical_metrics(tmp_path: Path) -> None:
    def run(name: str) -> dict[str, float]:
        cli = main(
            ["fit", "--config", DEFAULT, "--model.network", "resnet20"]
            + ["--data.samples_per_class", "20", "--trainer.max_epochs", "1"]
            + quiet_trainer(tmp_path, name)
        )
        state = cli.model.network.state_dict()
        metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
        return metrics | {"weight_sum": float(sum(v.double().sum() for v in state.values()))}

    assert run("a") == run("b")


def test_unknown_class_is_one_line_error() -> None:
    capl = Path(sys.executable).with_name("capl")
    proc = subprocess.run(
        [str(capl), "fit", "--config", DEFAULT, "--data.classes", "[3, 42]"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("capl: error:")]
    assert len(errors) == 1 and "42" in errors[0] and "0..9" in errors[0]
    assert "Traceback" not in proc.stderr


def test_print_config_resolves_short_names(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", DEFAULT, "--print_config"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "capl.datamodules.DigitsSubset" in printed and "network: resnet18" in printed


def test_checkpoint_of_another_network_is_a_clear_error(digits_base: Path, tmp_path: Path) -> None:
    # as weights of a differently configured network (the CLI's --ckpt_path instead adopts the
    # checkpoint's own hyperparameters, so it cannot mismatch)
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "test",
                "--config",
                DEFAULT,
                "--model.network",
                "resnet32",
                "--model.num_classes",
                "10",
            ]
            + ["--model.weights", str(digits_base)]
            + quiet_trainer(tmp_path, "t")
        )
    assert exit_info.value.code == 2
    # through the Python API, restoring into a model of another architecture
    trainer = Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    model = ImageClassifier(network="resnet32", num_classes=10, small_input=True)
    with pytest.raises(ConfigError, match="resnet20 but the model is configured as resnet32"):
        trainer.test(model, datamodule=DigitsSubset(), ckpt_path=str(digits_base))


def test_module_rejects_class_missing_from_head() -> None:
    model = ImageClassifier(network="resnet20", head_classes=[3, 5])
    with pytest.raises(ValueError, match="not in the model's head"):
        model.configure_task([3, 7])
    model.configure_task([5, 3])
    assert model.rows == [1, 0]
    logits = model.subset_logits(torch.zeros(2, 3, 8, 8))
    assert logits.shape == (2, 2)


def test_only_the_requested_subcommand_parser_is_built(
    capsys: pytest.CaptureFixture[str],
) -> None:
    built: list[list[str]] = []
    original = CaplCLI._add_subcommands

    def record(cli: CaplCLI, parser: object, **kwargs: object) -> None:
        original(cli, parser, **kwargs)
        built.append(sorted(cli._subcommand_parsers))

    with mock.patch.object(CaplCLI, "_add_subcommands", record):
        with pytest.raises(SystemExit) as exit_info:
            main(["test", "--config", DEFAULT, "--data.classes", "[2, 7]", "--print_config"])
        assert exit_info.value.code == 0
        assert "- 2\n" in capsys.readouterr().out  # the test parser parsed the override
        with pytest.raises(SystemExit) as exit_info:
            main(["--help"])
        assert exit_info.value.code == 0
    assert built == [["test"], ["fit", "predict", "test", "validate"]]
    listed = capsys.readouterr().out
    assert all(name in listed for name in ("fit", "validate", "test", "predict"))
