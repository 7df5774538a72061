"""capl.pruning.latency_table: per-layer latency tables and the latency target."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from capl.criteria import L1Norm, Magnitude
from capl.errors import ConfigError
from capl.models import build_network
from capl.pruning import PruningConfig, make_plan, prunable_layers
from capl.pruning import latency_table as lt
from capl.pruning.latency_table import LatencySpec, LatencyTable, kept_widths
from capl.pruning.latency_timer import TableTimer, layers_timed
from capl.pruning.structure import analyse

SIZE = 16


pytestmark = pytest.mark.usefixtures("one_thread")


def _net(arch: str = "resnet18") -> nn.Module:
    torch.manual_seed(0)
    return build_network(arch, 10, small_input=True).eval()


def _x() -> torch.Tensor:
    return torch.zeros(1, 3, SIZE, SIZE)


def _mac_table(model: nn.Module, ms_per_mac: float = 1e-6) -> LatencyTable:
    """A table whose layer latency is exactly proportional to its MACs (bilinear in widths)."""
    structure = analyse(model, _x())
    layers = {}
    for name, c in structure.layers.items():
        if c.kind not in ("conv", "linear"):
            continue
        outs = [1, c.out_channels] if c.out_channels > 1 else [1]
        if c.depthwise:
            ms = [[ms_per_mac * c.macs(o, o)] for o in outs]
            ins = outs
        else:
            ins = [c.groups, c.in_channels] if c.in_channels > c.groups else [c.in_channels]
            ms = [[ms_per_mac * c.macs(o, i) for o in outs] for i in ins]
        layers[name] = {"in_widths": ins, "out_widths": outs, "ms": ms,
                        "positions": c.positions, "depthwise": c.depthwise}  # fmt: skip
    base = sum(
        ms_per_mac * c.macs(c.out_channels, c.in_channels) for c in structure.layers.values()
    )
    settings = {"backend": "torch", "batch_size": 1, "threads": 1}
    return LatencyTable(settings=settings, base_ms=base, rest_ms=0.0, layers=layers)


def test_predict_interpolates_layers_and_scales_the_rest() -> None:
    layers = {
        "a": {"in_widths": [2, 4], "out_widths": [4, 8], "ms": [[1.0, 2.0], [3.0, 6.0]],
              "positions": 10, "depthwise": False},
        "b": {"in_widths": [4, 8], "out_widths": [4, 8], "ms": [[1.0], [4.0]],
              "positions": 30, "depthwise": True},
    }  # fmt: skip
    table = LatencyTable(settings={}, base_ms=20.0, rest_ms=4.0, layers=layers)
    assert table.predict({}) == pytest.approx(6.0 + 4.0 + 4.0)
    # a: inputs 3 (between 2 and 4), outputs 6 -> rows 1.5 and 4.5 -> 3.0; b depthwise 6 -> 2.5
    kept = (6 * 10 + 6 * 30) / (8 * 10 + 8 * 30)
    assert table.predict({"a": (3, 6), "b": (6, 6)}) == pytest.approx(3.0 + 2.5 + 4.0 * kept)
    # a backend that fuses the rest into the convs: the layers are scaled to the measured whole
    fused = LatencyTable(settings={}, base_ms=5.0, rest_ms=-5.0, layers=layers)
    assert fused.predict({}) == pytest.approx(5.0)
    assert fused.predict({"a": (3, 6), "b": (6, 6)}) == pytest.approx((3.0 + 2.5) * 5.0 / 10.0)
    # a kernel-timed table (ONNX Runtime): its rest shrinks with the layers, not the outputs
    kernels = LatencyTable(settings={"layers_timed": "kernels"}, base_ms=20.0, rest_ms=10.0,
                           layers=layers)  # fmt: skip
    assert kernels.predict({}) == pytest.approx(20.0)
    assert kernels.predict({"a": (3, 6), "b": (6, 6)}) == pytest.approx((3.0 + 2.5) * 20.0 / 10.0)
    # below the grid: linear extrapolation, never negative
    assert table.layer_ms("a", 1, 2) == pytest.approx(0.0)
    assert table.layer_ms("b", 1, 1) == 0.0


def test_latency_target_with_a_mac_proportional_table_equals_the_macs_target() -> None:
    for arch in ("resnet18", "mobilenet_v3_large"):
        model, criterion = _net(arch), L1Norm()
        scores = criterion.score(model, prunable_layers(model), {})
        table = _mac_table(model)
        structure = analyse(model, _x())
        assert table.predict(kept_widths(structure, {})) == pytest.approx(table.base_ms)
        for scope in ("layer", "global"):
            by_macs = make_plan(
                model, criterion, scores, PruningConfig(0.4, scope=scope, target="macs"), _x()
            )
            by_latency = make_plan(model, criterion, scores,
                                   PruningConfig(0.4, scope=scope, target="latency"), _x(),
                                   latency=table)  # fmt: skip
            assert by_latency.removed == by_macs.removed, (arch, scope)
            selection = by_latency.report["selection"]
            removed = selection["estimated_latency_removed_fraction"]
            assert removed == pytest.approx(selection["estimated_macs_removed_fraction"])
            assert removed >= 0.4 - 0.01
            assert selection["predicted_latency_ms"] == pytest.approx(table.base_ms * (1 - removed))
            assert selection["latency_table"] == {"backend": "torch", "batch_size": 1, "threads": 1}


def test_latency_target_errors() -> None:
    model, criterion = _net(), L1Norm()
    scores = criterion.score(model, prunable_layers(model), {})
    with pytest.raises(ConfigError, match="latency table"):
        make_plan(model, criterion, scores, PruningConfig(0.3, target="latency"), _x())
    masks = Magnitude()
    with pytest.raises(ConfigError, match="target latency needs physically removed channels"):
        weights = masks.score(model, prunable_layers(model, "weight"), {})
        config = PruningConfig(0.3, target="latency")
        make_plan(model, masks, weights, config, _x(), latency=_mac_table(model))
    with pytest.raises(ConfigError, match="latency backend"):
        LatencySpec(backend="tensorrt")
    with pytest.raises(ConfigError, match="batch_size"):
        LatencySpec(batch_size=0)


def test_measured_table_is_cached_and_predicts_the_base(tmp_path: Path, monkeypatch) -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 24, 1), nn.BatchNorm2d(24), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 10),
    ).eval()  # fmt: skip
    spec = LatencySpec(backend="torch", batch_size=2, threads=1, cache=str(tmp_path), repeats=1)
    table = lt.network_latency_table(model, _x(), spec, 8)
    # the input conv's inputs never change; the depthwise conv is one width; grids step by 8
    assert table.layers["0"]["in_widths"] == [3] and table.layers["0"]["out_widths"] == [8, 16]
    assert table.layers["3"]["depthwise"] and len(table.layers["3"]["ms"]) == 2
    assert table.layers["6"]["in_widths"] == [8, 16] and table.layers["6"]["out_widths"] == [
        8,
        16,
        24,
    ]
    assert table.layers["11"]["out_widths"] == [8, 10]  # a class-subset head may cut it
    assert all(ms > 0 for entry in table.layers.values() for row in entry["ms"] for ms in row)
    assert table.predict({}) == pytest.approx(table.base_ms)
    (cached,) = tmp_path.glob("latency-*.json")
    assert LatencyTable.from_dict(json.loads(cached.read_text())) == table

    def no_measuring(*args, **kwargs):
        raise AssertionError("measured again")

    monkeypatch.setattr(lt, "_measure", no_measuring)
    assert lt.network_latency_table(model, _x(), spec, 8) == table
    other = LatencySpec(backend="torch", batch_size=4, threads=1, cache=str(tmp_path))
    with pytest.raises(AssertionError, match="measured again"):  # another batch: another table
        lt.network_latency_table(model, _x(), other, 8)
    cached.write_text("{not json")
    with pytest.raises(ConfigError, match="unreadable"):
        lt.network_latency_table(model, _x(), spec, 8)


def test_onnxruntime_table_times_each_layer_by_its_own_kernels(tmp_path: Path, monkeypatch) -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    ).eval()  # fmt: skip
    spec = LatencySpec(backend="onnxruntime", batch_size=2, threads=1, repeats=3)
    table = lt.network_latency_table(model, _x(), spec, 8)
    assert table.settings["layers_timed"] == "kernels"
    assert all(ms > 0 for entry in table.layers.values() for row in entry["ms"] for ms in row)
    assert table.predict({}) == pytest.approx(table.base_ms)
    # per timed run, the layer's kernels without ORT's layout reorders; the median of the runs
    runs = [
        {("ReorderInput", "r"): 5.0, ("Conv", "c"): 1.0, ("ReorderOutput", "o"): 7.0},
        {("Conv", "c"): 3.0, ("ReorderOutput", "o"): 9.0},
        {("Conv", "c"): 1.5, ("Relu", "a"): 0.5},
    ]
    seen: dict[str, Any] = {"calls": 0}

    def fake_profiled_runs(path, shape, batch_size, threads, device, warmup, repeats):
        seen.update(calls=seen["calls"] + 1, warmup=warmup, shape=shape, batch=batch_size)
        return runs

    # ORT's profiler times CUDA nodes by their launch: only the CPU is timed by kernels
    assert layers_timed(LatencySpec(backend="onnxruntime", device="cuda")) == "wall clock"
    assert layers_timed(LatencySpec(backend="torch")) == "wall clock"
    monkeypatch.setattr("capl.pruning.latency_timer.profiled_runs", fake_profiled_runs)
    timer = TableTimer(spec, 1, tmp_path)
    assert timer.layer(model[2], (16, 32, 32), 16, 8) == pytest.approx(2.0)
    assert seen["warmup"] == spec.warmup
    assert seen["shape"] == (16, 32, 32) and seen["batch"] == spec.batch_size
    # the whole network is timed by the clock: what the layers miss is in it
    assert timer.network(model, (3, 32, 32)) > 0 and seen["calls"] == 1


def test_table_entries_are_medians_of_the_specs_runs(tmp_path: Path, monkeypatch) -> None:
    """Both timing paths take the median (not the upper median) of ``repeats`` runs."""
    conv = nn.Conv2d(16, 16, 1)
    kernel_spec = LatencySpec(backend="onnxruntime", batch_size=2, threads=1, warmup=2, repeats=4)
    four_runs = [{("Conv", "c"): ms} for ms in (1.0, 2.0, 3.0, 10.0)]
    monkeypatch.setattr("capl.pruning.latency_timer.profiled_runs", lambda *a, **k: four_runs)
    # median 2.5; the upper median would give 3.0
    assert TableTimer(kernel_spec, 1, tmp_path).layer(conv, (16, 8, 8), 16, 8) == 2.5
    seen: dict[str, Any] = {}

    def fake_clock(net, shape, batch_size, device, threads, **protocol):
        seen.update(protocol, batch=batch_size, threads=threads, shape=shape)
        return {"median_ms": 4.0, "min_ms": 1.0, "p90_ms": 9.0}

    monkeypatch.setattr("capl.pruning.latency_timer.measure_latency_torch", fake_clock)
    clock_spec = LatencySpec(backend="torch", batch_size=2, threads=1, warmup=2, repeats=4)
    # the clock path: the timing protocol's median, warm-up and repeats from the spec, no min time
    assert TableTimer(clock_spec, 1, tmp_path).layer(conv, (16, 8, 8), 16, 8) == 4.0
    assert seen == {
        "warmup": 2, "repeats": 4, "min_time_s": 0.0, "batch": 2, "threads": 1, "shape": (16, 8, 8)
    }  # fmt: skip
