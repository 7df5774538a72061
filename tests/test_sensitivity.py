"""capl-sensitivity: per-layer scan on a ResNet-20, the suggestion rule, outputs and CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml

from capl.errors import ConfigError
from capl.sweep.cli import sensitivity_main
from capl.sweep.sensitivity import parse_sensitivity_config, suggest_ratios


@pytest.fixture(scope="module")
def base_weights(tmp_path_factory: pytest.TempPathFactory) -> str:
    from capl.models import build_network

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("base") / "resnet20.pt"
    torch.save(build_network("resnet20", 10, small_input=True).state_dict(), path)
    return str(path)


def config_dict(weights: str) -> dict:
    return {
        "base": {"network": "resnet20", "small_input": True, "num_classes": 10,
                 "checkpoint": weights},
        "data": {"class_path": "DigitsSubset",
                 "init_args": {"classes": [3, 5, 8], "samples_per_class": 30,
                               "calibration_samples_per_class": 4}},
        "criterion": "L1Norm",
        "ratios": [0.5, 0.9],
        "layers": ["conv1", "layer1.0.conv1", "layer3.2.conv1"],
        "split": "test",
        "max_accuracy_drop": 0.02,
    }


def test_scan_writes_table_plot_and_suggestion(base_weights: str, tmp_path: Path) -> None:
    cfg = tmp_path / "sens.yaml"
    cfg.write_text(yaml.safe_dump(config_dict(base_weights)))
    out = tmp_path / "out"
    assert sensitivity_main(["--config", str(cfg), "--output", str(out)]) == 0
    with open(out / "sensitivity.csv") as handle:
        rows = list(csv.DictReader(handle))
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    assert layers == ["conv1", "layer1.0.conv1", "layer3.2.conv1"]
    assert {float(r["ratio"]) for r in rows} == {0.0, 0.5, 0.9}
    suggestion = json.loads((out / "suggestion.json").read_text())
    base = suggestion["base_accuracy"]
    for layer in layers:
        zero = next(r for r in rows if r["layer"] == layer and float(r["ratio"]) == 0.0)
        assert float(zero["accuracy"]) == pytest.approx(base, abs=0)
        assert float(zero["macs_removed"]) == 0.0
        pruned = next(r for r in rows if r["layer"] == layer and float(r["ratio"]) == 0.9)
        assert 0.0 < float(pruned["macs_removed"]) < 0.5  # one layer alone removes a little
    # conv1 is coupled to the first residual stage: its unit holds several convs
    conv1 = next(r for r in rows if r["layer"] == "conv1")
    assert "layer1.0.conv2" in conv1["members"].split(";")
    assert set(suggestion["layer_ratios"]) == set(layers)
    assert (out / "sensitivity.png").stat().st_size > 1000
    assert suggestion == json.loads((out / "suggestion.json").read_text())


def test_ratio_zero_is_the_base_accuracy_in_plain_scan(base_weights: str) -> None:
    from capl.datamodules import DigitsSubset

    from capl.evaluation import accuracy_from_confusion, confusion_matrix, target_rows
    from capl.models import build_network
    from capl.strategies import OCAP
    from capl.sweep.sensitivity import scan_layers

    dm = DigitsSubset(classes=[3, 5, 8], samples_per_class=20, calibration_samples_per_class=4)
    dm.setup("test")
    net = build_network("resnet20", 10, True, base_weights)
    rows = target_rows(list(range(10)), dm.class_indices)
    batches = list(dm.test_dataloader())
    base, table = scan_layers(net, OCAP(), list(dm.calibration_dataloader()), batches, rows,
                              [0.0, 0.5], dm.input_shape, layers=["layer2.0.conv1"])
    expected = accuracy_from_confusion(confusion_matrix(net, batches, rows))["accuracy"]
    assert base == expected
    assert [r["ratio"] for r in table] == [0.0, 0.5]
    assert table[0]["accuracy"] == expected and table[0]["accuracy_drop"] == 0.0


def test_suggestion_rule_on_a_hand_made_table() -> None:
    table = [
        {"layer": "a", "ratio": 0.0, "accuracy": 0.90},
        {"layer": "a", "ratio": 0.3, "accuracy": 0.895},
        {"layer": "a", "ratio": 0.5, "accuracy": 0.89},   # drop 0.01: allowed (<=)
        {"layer": "a", "ratio": 0.7, "accuracy": 0.80},
        {"layer": "b", "ratio": 0.0, "accuracy": 0.90},
        {"layer": "b", "ratio": 0.3, "accuracy": 0.70},   # sensitive at once
        {"layer": "b", "ratio": 0.5, "accuracy": 0.60},
        {"layer": "c", "ratio": 0.5, "accuracy": 0.85},   # noisy: fails, then recovers
        {"layer": "c", "ratio": 0.3, "accuracy": 0.90},
        {"layer": "c", "ratio": 0.7, "accuracy": 0.90},
    ]
    assert suggest_ratios(table, 0.90, 0.01) == {"a": 0.5, "b": 0.0, "c": 0.3}
    assert suggest_ratios(table, 0.90, 0.01, contiguous=False) == {"a": 0.5, "b": 0.0, "c": 0.7}
    assert suggest_ratios(table, 0.90, 0.5) == {"a": 0.7, "b": 0.5, "c": 0.7}


def test_invalid_sensitivity_config(base_weights: str) -> None:
    bad = config_dict(base_weights) | {"split": "train"}
    with pytest.raises(ConfigError, match="split must be val or test"):
        parse_sensitivity_config(bad)
    config = parse_sensitivity_config(config_dict(base_weights))
    assert config.ratios == [0.0, 0.5, 0.9]
