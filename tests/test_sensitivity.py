"""capl-sensitivity: per-layer scan on a ResNet-20, the suggestion rule, outputs and CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml

from capl.errors import ConfigError
from capl.sensitivity import parse_sensitivity_config, suggest_ratios
from capl.sensitivity.cli import main as sensitivity_main


@pytest.fixture(scope="module")
def base_weights(tmp_path_factory: pytest.TempPathFactory) -> str:
    from capl.models import build_network

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("base") / "resnet20.pt"
    torch.save(build_network("resnet20", 10, small_input=True).state_dict(), path)
    return str(path)


def config_dict(weights: str) -> dict:
    return {
        "base": {
            "network": "resnet20",
            "small_input": True,
            "num_classes": 10,
            "checkpoint": weights,
        },
        "data": {
            "class_path": "DigitsSubset",
            "init_args": {
                "classes": [3, 5, 8],
                "samples_per_class": 30,
                "calibration_samples_per_class": 4,
            },
        },
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
    from capl.criteria import OCAP
    from capl.datamodules import DigitsSubset
    from capl.evaluation import accuracy_from_confusion, confusion_matrix, target_rows
    from capl.models import build_network
    from capl.sensitivity import scan_layers

    dm = DigitsSubset(classes=[3, 5, 8], samples_per_class=20, calibration_samples_per_class=4)
    dm.setup("test")
    net = build_network("resnet20", 10, True, base_weights)
    rows = target_rows(list(range(10)), dm.class_indices)
    batches = list(dm.test_dataloader())
    base, table = scan_layers(
        net,
        OCAP(),
        list(dm.calibration_dataloader()),
        batches,
        rows,
        [0.0, 0.5],
        dm.input_shape,
        layers=["layer2.0.conv1"],
    )
    expected = accuracy_from_confusion(confusion_matrix(net, batches, rows))["accuracy"]
    assert base == expected
    assert [r["ratio"] for r in table] == [0.0, 0.5]
    assert table[0]["accuracy"] == expected and table[0]["accuracy_drop"] == 0.0


def test_suggestion_rule_on_a_hand_made_table() -> None:
    table = [
        {"layer": "a", "ratio": 0.0, "accuracy": 0.90},
        {"layer": "a", "ratio": 0.3, "accuracy": 0.895},
        {"layer": "a", "ratio": 0.5, "accuracy": 0.89},  # drop 0.01: allowed (<=)
        {"layer": "a", "ratio": 0.7, "accuracy": 0.80},
        {"layer": "b", "ratio": 0.0, "accuracy": 0.90},
        {"layer": "b", "ratio": 0.3, "accuracy": 0.70},  # sensitive at once
        {"layer": "b", "ratio": 0.5, "accuracy": 0.60},
        {"layer": "c", "ratio": 0.5, "accuracy": 0.85},  # noisy: fails, then recovers
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


def test_suggestion_feeds_a_layer_ratio_plan(base_weights: str) -> None:
    """scan -> suggestion -> PruningConfig(layer_ratios=...) -> plan removes what the scan did."""
    from capl.callbacks import PruningCallback
    from capl.criteria import L1Norm
    from capl.datamodules import DigitsSubset
    from capl.evaluation import target_rows
    from capl.models import build_network
    from capl.pruning import PruningConfig, make_plan, prunable_layers
    from capl.sensitivity import scan_layers, suggested_pruning, suggested_pruning_yaml

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        dm = DigitsSubset(classes=[3, 5, 8], samples_per_class=10, calibration_samples_per_class=2)
        dm.setup("test")
        net = build_network("resnet20", 10, True, base_weights).eval()
        rows = target_rows(list(range(10)), dm.class_indices)
        criterion = L1Norm()
        # layer1.0.conv2 is a member of conv1's group: the scan names the unit by its key conv
        layers = ["layer1.0.conv2", "layer2.0.conv1", "layer3.1.conv1"]
        base, table = scan_layers(
            net,
            criterion,
            [],
            list(dm.test_dataloader()),
            rows,
            [0.0, 0.25, 0.5],
            dm.input_shape,
            layers=layers,
        )
        # a deterministic mix of suggested ratios: cap each layer's scanned ratios
        cap = {"conv1": 0.25, "layer2.0.conv1": 0.5, "layer3.1.conv1": 0.0}
        capped = [r for r in table if r["ratio"] <= cap[r["layer"]]]
        layer_ratios = suggest_ratios(capped, base, max_drop=1.0)
        assert layer_ratios == cap
        config = PruningConfig(ratio=0.0, scope="layer", layer_ratios=layer_ratios, round_to=None)
        example = torch.zeros(1, *dm.input_shape)
        plan = make_plan(
            net, criterion, criterion.score(net, prunable_layers(net), {}), config, example
        )
        layers_after = plan.report["layers"]
        for key, ratio in layer_ratios.items():
            before = layers_after[key]["channels_before"]
            assert before - layers_after[key]["channels_after"] == int(ratio * before + 0.5)
        # groups are disjoint: the per-layer scans' channel removals add up
        scanned = sum(
            r["channels_removed"] for r in table if r["ratio"] == layer_ratios[r["layer"]]
        )
        assert plan.report["channels_removed_fraction"] == pytest.approx(scanned, abs=1e-12)

        suggestion = {
            "network": "resnet20",
            "dataset": "digits",
            "classes": [3, 5, 8],
            "base_weights": base_weights,
            "max_accuracy_drop": 1.0,
            "criterion": {"class_path": "capl.criteria.L1Norm", "init_args": {}},
            "layer_ratios": layer_ratios,
        }
        entry = suggested_pruning(suggestion)
        assert yaml.safe_load(suggested_pruning_yaml(suggestion)) == [entry]
        init_args = dict(entry["init_args"])
        assert init_args["scope"] == "layer" and init_args["layer_ratios"] == layer_ratios
        init_args["criterion"] = L1Norm()
        callback = PruningCallback(**init_args)
        assert callback.config == config
    finally:
        torch.set_num_threads(threads)


def test_cli_writes_suggested_pruning_yaml(base_weights: str, tmp_path: Path) -> None:
    from capl.pruning import PruningConfig

    raw = config_dict(base_weights) | {"layers": ["layer1.0.conv2"], "ratios": [0.5]}
    raw["data"]["init_args"] |= {"samples_per_class": 10, "calibration_samples_per_class": 2}
    cfg = tmp_path / "sens.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    out = tmp_path / "out"
    assert sensitivity_main(["--config", str(cfg), "--output", str(out)]) == 0
    suggestion = json.loads((out / "suggestion.json").read_text())
    assert list(suggestion["layer_ratios"]) == ["conv1"]  # the group's key conv
    text = (out / "suggested_pruning.yaml").read_text()
    assert text.startswith("#")
    (entry,) = yaml.safe_load(text)
    assert entry["class_path"] == "capl.callbacks.PruningCallback"
    args = entry["init_args"]
    assert args["criterion"]["class_path"] == "capl.criteria.L1Norm"
    assert args["layer_ratios"] == suggestion["layer_ratios"]
    PruningConfig(**{k: v for k, v in args.items() if k != "criterion"})


def test_suggested_pruning_rejects_bad_ratios() -> None:
    from capl.sensitivity import suggested_pruning

    with pytest.raises(ConfigError, match="layer_ratios"):
        suggested_pruning(
            {"layer_ratios": {"conv1": 1.0}, "criterion": {"class_path": "capl.criteria.L1Norm"}}
        )
