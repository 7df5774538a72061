"""benchmark.json's record: build_record, accuracy stages, key paths, the old "strategy" key."""

from __future__ import annotations

import subprocess
import sys

import pytest

import capl.benchmark
from capl.benchmark.record import (
    ACCURACY_AFTER,
    CRITERION_NAME,
    accuracy_stages,
    build_record,
    criterion_name,
    criterion_of,
    latency_key,
    measured_speedup_key,
    run_info,
    stage_accuracy_key,
)
from capl.sweep.rows import flatten


def _block(accuracy: float, macs: int, median_ms: float) -> dict:
    return {
        "accuracy": accuracy,
        "accuracy_macro": accuracy,
        "accuracy_per_class": {"a": accuracy, "b": accuracy},
        "test_samples": 20,
        "macs": macs,
        "params": macs // 10,
        "nonzero_params": macs // 10,
        "size_bytes": macs // 2,
        "latency_ms": {"torch": {"bs1": {"median_ms": median_ms}}},
        "layers": {"conv": {"type": "Conv2d", "live_out_channels": macs // 100}},
    }


def _record(plan: dict | None, recorded: dict | None, retrain_epochs: int) -> dict:
    before, after = _block(0.9, 1000, 4.0), _block(0.8, 500, 2.5)
    stages = accuracy_stages(before, after, recorded, retrained=retrain_epochs > 0)
    return build_record(
        version="9.9",
        run=run_info("runs/x", "point-1"),
        model="resnet18",
        dataset="digits",
        classes={"indices": [3, 5], "names": ["3", "5"]},
        plan=plan,
        seed=7,
        retrain_epochs=retrain_epochs,
        best_epoch=None,
        input_shape={"accuracy": [3, 8, 8], "benchmark": [3, 8, 8]},
        stages=stages,
        before=before,
        after=after,
        per_layer={},
        timings={"selection": 1.5},
        environment={"device": "cpu"},
    )


def test_build_record_writes_the_criterion_and_relates_the_blocks() -> None:
    plan = {"criterion": {"name": "OCAP"}, "config": {"ratio": 0.5, "scope": "global"}}
    record = _record(plan, {"pruned": {"accuracy": 0.6}}, retrain_epochs=2)
    assert record["criterion"] == {"name": "OCAP"} and "strategy" not in record
    assert (record["ratio"], record["scope"], record["target"]) == (0.5, "global", None)
    assert record["run"]["name"] == "point-1" and record["run"]["stage"] == "test"
    assert record["timings_s"] == {"selection": 1.5, "removal": 0.0, "retraining": 0.0}
    assert record["realised"]["macs_removed"] == pytest.approx(0.5)
    assert record["realised"]["measured_speedup"] == {"torch": {"bs1": pytest.approx(1.6)}}
    assert record["realised"]["efficiency"]["torch"]["bs1"] == pytest.approx(0.8)
    assert record["realised"]["channels_removed"] == pytest.approx(0.5)
    stages = record["accuracy_stages"]
    assert stages["chance"] == 0.5 and stages["base"]["accuracy"] == 0.9
    assert stages["pruned"] == {"accuracy": 0.6} and stages["retrained"]["accuracy"] == 0.8
    row = flatten(record)
    assert row[CRITERION_NAME] == "OCAP" and row[ACCURACY_AFTER] == 0.8
    assert row[measured_speedup_key("torch", "bs1")] == pytest.approx(1.6)
    assert row[latency_key("after", "torch", "bs1")] == 2.5
    assert row[stage_accuracy_key("retrained")] == 0.8


def test_accuracy_stages_of_unpruned_and_prune_only_runs() -> None:
    unpruned = _record(None, None, retrain_epochs=0)
    assert unpruned["criterion"] is None and set(unpruned["accuracy_stages"]) == {"chance", "base"}
    # a checkpoint of an older capl recorded no stages: the model under test is the pruned one
    older = _record({"criterion": {"name": "L1Norm"}}, {}, retrain_epochs=0)
    assert older["accuracy_stages"]["pruned"]["accuracy"] == 0.8
    assert "retrained" not in older["accuracy_stages"]


def test_the_old_strategy_key_is_read() -> None:
    assert criterion_of({"strategy": {"name": "OCAP"}}) == {"name": "OCAP"}
    assert criterion_of({"criterion": None, "strategy": {"name": "x"}}) is None
    assert criterion_name({"strategy": "Taylor"}) == "Taylor"
    assert criterion_name({}) is None


def test_package_names_resolve_and_the_record_needs_no_torch() -> None:
    for name in capl.benchmark.__all__:
        assert getattr(capl.benchmark, name) is not None, name
    with pytest.raises(AttributeError):
        capl.benchmark.no_such_name  # noqa: B018
    code = (
        "import sys, capl.benchmark.record, capl.sweep.report; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
