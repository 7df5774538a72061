"""A sweep that shares its work: the base block measured once, latency timed per group.

Tiny digits sweeps with a ResNet-20 (the session's ``digits_base``), a few timed repeats on both
backends; every assertion reads what the sweep wrote.
"""

from __future__ import annotations

import gc
import json
import weakref
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import torch
from torch import nn

import capl.benchmark.group as group
import capl.benchmark.profile as profile_mod
import capl.callbacks.benchmark as benchmark_mod
import capl.memo as memo_mod
import capl.sweep.runner as runner_mod
import capl.sweep.sharing as sharing_mod
from capl.benchmark.base_cache import BASE_BLOCK_FILE, BaseCache
from capl.benchmark.group import LatencyJob, architecture_key, time_jobs
from capl.callbacks.benchmark_sharing import base_key
from capl.datamodules import DigitsSubset
from capl.models import build_network
from capl.sweep.grid import parse_sweep_config
from capl.sweep.points import BASE_BENCH_DIR, long_lived_objects_frozen
from capl.sweep.runner import RESULT_FILE, run_sweep

BENCH = {
    "batch_sizes": [1],
    "backends": ["torch", "onnxruntime"],
    "warmup": 0,
    "repeats": 2,
    "min_time_s": 0,
    "rounds": 2,
    "exporter": "torchscript",
}
DATA = {
    "class_path": "DigitsSubset",
    "init_args": {"batch_size": 32, "samples_per_class": 20, "calibration_samples_per_class": 4},
}


def sweep(
    base: Path,
    ratios: list[float],
    classes: list[list[int]],
    criteria: list[Any] | None = None,
    pruning: dict[str, Any] | None = None,
    **bench: Any,
) -> Any:
    return parse_sweep_config(
        {
            "name": "sharing",
            "base": {
                "network": "resnet20",
                "small_input": True,
                "num_classes": 10,
                "checkpoint": str(base),
            },
            "data": DATA,
            "grid": {"criteria": criteria or ["L1Norm"], "ratios": ratios, "classes": classes},
            "pruning": pruning or {},
            "benchmark": {**BENCH, **bench},
        }
    )


def records(out: Path) -> dict[str, dict[str, Any]]:
    return {
        p.name: json.loads((p / "benchmark.json").read_text())
        for p in sorted((out / "points").iterdir())
    }


def counting(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the BenchmarkCallback's own model evaluations.

    A prune-only point's model under test is the network the PruningCallback has just
    evaluated, so the benchmark takes that accuracy (PruningCallback.known_accuracy) and only
    the base is evaluated here.
    """
    calls: list[int] = []
    real = benchmark_mod.evaluate_subset

    def evaluate(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(benchmark_mod, "evaluate_subset", evaluate)
    return calls


def test_base_measured_once_and_points_timed_in_one_group(
    digits_base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    evaluations = counting(monkeypatch)
    run = run_sweep(sweep(digits_base, [0.3, 0.5, 0.7], [[3, 5, 8]]), tmp_path, plots=False)
    assert [r.status for r in run.ran] == ["ok"] * 3
    assert len(evaluations) == 1  # the base once (the pruned models: in PruningCallback)
    benches = list(records(tmp_path).values())
    entries = list((tmp_path / BASE_BENCH_DIR).glob(f"*/{BASE_BLOCK_FILE}"))
    assert len(entries) == 1 and (entries[0].parent / "before.onnx").is_file()
    cached = json.loads(entries[0].read_text())["block"]
    for bench in benches:
        assert bench["before"] == benches[0]["before"]  # one block, one group timing
        before = {k: v for k, v in bench["before"].items() if k != "latency_ms"}
        assert before == cached
        assert bench["before"]["base_cache"] == entries[0].parent.name
        for backend in ("torch", "onnxruntime"):
            cell_b = bench["before"]["latency_ms"][backend]["bs1"]
            cell_a = bench["after"]["latency_ms"][backend]["bs1"]
            assert cell_a["interleaved_models"] == 4  # the base and the three pruned models
            assert cell_a["repeats"] >= 2 and cell_b["repeats"] >= 2
            assert bench["realised"]["measured_speedup"][backend]["bs1"] == pytest.approx(
                cell_b["median_ms"] / cell_a["median_ms"]
            )
    # each point's pruned model is its own: the latencies differ, the MACs fall with the ratio
    macs = [b["after"]["macs"] for b in benches]
    assert macs == sorted(macs, reverse=True) and len(set(macs)) == 3
    assert not list((tmp_path / "points").glob("*/*.onnx"))  # timed, then removed


def test_paired_sweep_times_each_point_against_the_base(
    digits_base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    evaluations = counting(monkeypatch)
    config = sweep(digits_base, [0.3, 0.5], [[3, 5, 8]], latency="paired", base_cache=None)
    run = run_sweep(config, tmp_path, plots=False)
    assert [r.status for r in run.ran] == ["ok"] * 2
    assert len(evaluations) == 2  # the old behaviour: the base again for every point
    assert not (tmp_path / BASE_BENCH_DIR).exists()
    for bench in records(tmp_path).values():
        assert bench["after"]["latency_ms"]["torch"]["bs1"]["interleaved_models"] == 2
        assert "base_cache" not in bench["before"]


def test_interrupted_or_failed_group_run_leaves_points_to_rerun(
    digits_base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = sweep(digits_base, [0.3, 0.5], [[3, 5, 8], [1, 2]])

    def killed(jobs: Any) -> None:
        raise KeyboardInterrupt  # the job is killed while the group is being timed

    monkeypatch.setattr(sharing_mod, "time_jobs", killed)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(config, tmp_path, plots=False)
    assert not list((tmp_path / "points").glob(f"*/{RESULT_FILE}"))

    def broken(jobs: Any) -> None:
        raise RuntimeError("ORT session exploded")

    monkeypatch.setattr(sharing_mod, "time_jobs", broken)
    run = run_sweep(config, tmp_path, plots=False)
    assert len(run.ran) == 4 and all(r.status == "failed" for r in run.ran)
    assert all("ORT session exploded" in (r.error or "") for r in run.ran)

    monkeypatch.undo()
    evaluations = counting(monkeypatch)
    rerun = run_sweep(config, tmp_path, plots=False)
    assert sorted(r.point_id for r in rerun.ran) == sorted(p.point_id for p in rerun.points)
    assert all(r.status == "ok" for r in rerun.ran)
    assert evaluations == []  # both class subsets' base blocks came from the cache
    assert len(list((tmp_path / BASE_BENCH_DIR).glob(f"*/{BASE_BLOCK_FILE}"))) == 2
    benches = records(tmp_path)
    for bench in benches.values():
        cell = bench["after"]["latency_ms"]["torch"]["bs1"]
        assert cell["interleaved_models"] == 3  # one group per class subset: base + 2 points
    subsets = {tuple(b["classes"]["indices"]): b["before"]["base_cache"] for b in benches.values()}
    assert len(set(subsets.values())) == 2


def test_base_key_follows_weights_classes_input_size_and_options() -> None:
    torch.manual_seed(0)
    net = build_network("resnet20", 10, True)
    head = list(range(10))
    options = {"batch_sizes": [1], "backends": ["torch"], "exporter": "auto"}

    def key(classes: list[int], shape: tuple[int, ...], **changes: Any) -> str:
        data = DigitsSubset(classes=classes, image_size=changes.pop("image_size", None))
        return base_key((changes.pop("net", net), head), data, shape, {**options, **changes})

    reference = key([3, 5, 8], (3, 8, 8))
    assert key([3, 5, 8], (3, 8, 8)) == reference
    other = build_network("resnet20", 10, True)
    other.load_state_dict(net.state_dict())
    assert key([3, 5, 8], (3, 8, 8), net=other) == reference  # same weights, another object
    with torch.no_grad():
        other.fc.bias[0] += 1e-3
    changed = [
        key([3, 5, 7], (3, 8, 8)),
        key([3, 5, 8], (3, 16, 16)),
        key([3, 5, 8], (3, 8, 8), image_size=16),
        key([3, 5, 8], (3, 8, 8), net=other),
        key([3, 5, 8], (3, 8, 8), batch_sizes=[1, 32]),
        key([3, 5, 8], (3, 8, 8), exporter="torchscript"),
    ]
    assert reference not in changed and len(set(changed)) == len(changed)


def test_base_cache_reads_only_complete_entries(tmp_path: Path) -> None:
    cache = BaseCache(tmp_path)
    assert cache.load("k1") is None
    cache.store("k1", {"accuracy": 0.9, "macs": 10, "onnx": None})
    assert cache.load("k1") == {"accuracy": 0.9, "macs": 10, "onnx": None}
    cache.store("k2", {"accuracy": 0.9, "onnx": {"exporter": "torchscript", "path": None}})
    assert cache.load("k2") is None  # names an export that is not there
    cache.onnx_path("k2").write_bytes(b"onnx")
    assert cache.load("k2") is not None
    (cache.entry("k3")).mkdir()
    (cache.entry("k3") / BASE_BLOCK_FILE).write_text('{"key": "k1", "block": {"accuracy": 1}}')
    assert cache.load("k3") is None  # written for another key
    (cache.entry("k3") / BASE_BLOCK_FILE).write_text("{not json")
    assert cache.load("k3") is None


def test_interrupt_while_pruning_times_and_records_the_points_already_pruned(
    digits_base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = sweep(digits_base, [0.3, 0.5, 0.7], [[3, 5, 8]])
    real = runner_mod.run_point
    started: list[str] = []

    frozen: list[int] = []

    def run_point(config: Any, point: Any, *args: Any, **kwargs: Any) -> Any:
        started.append(point.point_id)
        frozen.append(gc.get_freeze_count())
        if len(started) == 3:
            raise KeyboardInterrupt  # Ctrl-C while the third point is being pruned
        return real(config, point, *args, **kwargs)

    monkeypatch.setattr(runner_mod, "run_point", run_point)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(config, tmp_path, plots=False)
    # the objects alive before the loop were frozen while the points ran, thawed on Ctrl-C
    assert len(frozen) == 3 and min(frozen) > 10_000 and gc.get_freeze_count() == 0
    recorded = {p.parent.name for p in (tmp_path / "points").glob(f"*/{RESULT_FILE}")}
    assert recorded == set(started[:2])  # the two pruned points were timed before stopping
    for name in recorded:
        bench = json.loads((tmp_path / "points" / name / "benchmark.json").read_text())
        assert bench["after"]["latency_ms"]["torch"]["bs1"]["interleaved_models"] == 3
        assert json.loads((tmp_path / "points" / name / RESULT_FILE).read_text())["status"] == "ok"
    assert not (tmp_path / "points" / started[2]).exists()

    monkeypatch.undo()
    rerun = run_sweep(config, tmp_path, plots=False)
    assert [r.point_id for r in rerun.ran] == [started[2]]  # only the interrupted point again
    assert sorted(rerun.already_done) == sorted(started[:2])


class _Cycle:
    def __init__(self) -> None:
        self.me = self


def test_frozen_heap_still_collects_what_the_points_leave() -> None:
    alive_before = _Cycle()
    with long_lived_objects_frozen():
        assert gc.get_freeze_count() > 0
        left = _Cycle()  # a point's trainer and model hold cycles like this one
        dead = weakref.ref(left)
        del left
        gc.collect()
        assert dead() is None  # collected although the older objects are skipped
        frozen_cycle = weakref.ref(alive_before)
        del alive_before
        gc.collect()
        assert frozen_cycle() is not None  # frozen: not collected while the points run
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert frozen_cycle() is None  # thawed: collectable again


def _net(width: int, stride: int = 1) -> nn.Module:
    conv = nn.Conv2d(3, width, 3, stride=stride, padding=1)
    return nn.Sequential(conv, nn.ReLU(), nn.Flatten(), nn.Linear(width * (8 // stride) ** 2, 2))


def test_models_of_one_architecture_are_timed_once() -> None:
    torch.manual_seed(0)
    base, a, same_as_a, b = _net(16), _net(8), _net(8), _net(8, stride=2)
    assert architecture_key(a) == architecture_key(same_as_a)  # other weights, same shapes
    assert not torch.equal(a[0].weight, same_as_a[0].weight)
    assert len({architecture_key(m) for m in (base, a, b)}) == 3  # width, stride
    timing = {"input_shape": [3, 8, 8], "batch_sizes": [1, 2], "backends": ["torch"],
              "warmup": 0, "repeats": 2, "min_time_s": 0, "rounds": 2}  # fmt: skip
    finished: dict[str, tuple[Any, Any, Any]] = {}
    jobs = [
        LatencyJob(key="k", base=base if i == 0 else None, base_onnx=None, model=model,
                   timing=timing, name=name,
                   finish=lambda *measured, name=name: finished.update({name: measured}))
        for i, (name, model) in enumerate([("a", a), ("same-as-a", same_as_a), ("b", b)])
    ]  # fmt: skip
    with mock.patch.object(group, "shape_profile", wraps=group.shape_profile) as shapes:
        time_jobs(jobs)
    assert [c.args[0] for c in shapes.call_args_list] == [a, b]  # memory measured once each
    for batch in ("bs1", "bs2"):
        cells = {name: after["torch"][batch] for name, (_, after, _) in finished.items()}
        assert all(cell["interleaved_models"] == 3 for cell in cells.values())  # base, a, b
        assert cells["same-as-a"].pop("same_architecture_as") == "a"
        assert cells["same-as-a"] == cells["a"]  # a's measurement, copied
        assert "same_architecture_as" not in cells["a"] and "same_architecture_as" not in cells["b"]
        assert cells["b"]["median_ms"] != cells["a"]["median_ms"]
        memory = {name: block["peak_memory"][batch] for name, (_, _, block) in finished.items()}
        assert memory["same-as-a"].pop("same_architecture_as") == "a"
        assert memory["same-as-a"] == memory["a"] and "same_architecture_as" not in memory["a"]
        assert memory["b"]["peak_bytes"] != memory["a"]["peak_bytes"]  # stride 2: other shapes
    assert finished["a"][0] == finished["b"][0]  # one base measurement for all
    assert all(block["onnx"] is None for _, _, block in finished.values())  # torch only


def test_group_run_exports_each_architecture_and_records_a_failed_export(tmp_path: Path) -> None:
    from capl.benchmark import export_onnx

    torch.manual_seed(0)
    base, good, bad = _net(16), _net(8), _net(4)
    base_onnx = tmp_path / "before.onnx"
    export_onnx(base, base_onnx, (3, 8, 8), exporter="torchscript")
    real_export = profile_mod.export_onnx

    def export(model: nn.Module, *args: Any, **kwargs: Any) -> Any:
        if model is bad:
            raise RuntimeError("unsupported operator")
        return real_export(model, *args, **kwargs)

    finished: dict[str, tuple[Any, Any, Any]] = {}
    timing = {"input_shape": [3, 8, 8], "batch_sizes": [1], "backends": ["torch", "onnxruntime"],
              "warmup": 0, "repeats": 2, "min_time_s": 0, "rounds": 2}  # fmt: skip
    jobs = [
        LatencyJob(key="k", base=base if i == 0 else None, base_onnx=str(base_onnx), model=model,
                   timing=timing, name=name, exporter="torchscript",
                   finish=lambda *measured, name=name: finished.update({name: measured}))
        for i, (name, model) in enumerate([("good", good), ("bad", bad)])
    ]  # fmt: skip
    with mock.patch.object(profile_mod, "export_onnx", export):
        time_jobs(jobs)
    _, good_cells, good_shapes = finished["good"]
    _, bad_cells, bad_shapes = finished["bad"]
    assert set(good_cells) == {"torch", "onnxruntime"} and set(bad_cells) == {"torch"}
    assert good_cells["onnxruntime"]["bs1"]["interleaved_models"] == 2  # the base and good
    assert good_shapes["onnx"]["bytes"] > 0 and good_shapes["onnx"]["path"] is None
    assert good_shapes["errors"] == {}
    assert bad_shapes["onnx"] is None
    assert "unsupported operator" in bad_shapes["errors"]["onnx_export"]
    assert bad_shapes["peak_memory"]["bs1"]["peak_bytes"] > 0  # memory measured all the same


def test_criteria_with_equal_widths_share_one_timing_in_a_sweep(
    digits_base: Path, tmp_path: Path
) -> None:
    # layer scope: every criterion keeps the same number of channels per layer
    layer = [{"class_path": name, "scopes": ["layer"]} for name in ("L1Norm", "Random")]
    config = sweep(digits_base, [0.5], [[3, 5, 8]], criteria=layer, pruning={"round_to": 8})
    run = run_sweep(config, tmp_path, plots=False)
    assert [r.status for r in run.ran] == ["ok"] * 2
    benches = records(tmp_path)
    l1 = next(b for name, b in benches.items() if name.startswith("l1norm"))
    rand = next(b for name, b in benches.items() if name.startswith("random"))
    assert l1["after"]["macs"] == rand["after"]["macs"]
    for backend in ("torch", "onnxruntime"):
        cells = [bench["after"]["latency_ms"][backend]["bs1"] for bench in (l1, rand)]
        assert [c["interleaved_models"] for c in cells] == [2, 2]  # the base and one model
        assert len([c for c in cells if "same_architecture_as" in c]) == 1
        assert cells[0]["median_ms"] == cells[1]["median_ms"]
    exports = [bench["after"]["onnx"] for bench in (l1, rand)]  # one export, by the group run
    assert len([e for e in exports if e.pop("same_architecture_as", None)]) == 1
    assert exports[0] == exports[1] and exports[0]["path"] is None
    assert l1["after"]["peak_memory"] and l1["after"]["peak_memory_bytes"] > 0


def _same_network_sweep(base: Path, out: Path) -> dict[str, dict[str, Any]]:
    """Two layer-scope L1-norm points whose widths round to the same (16 | ResNet-20's)."""
    layer = [{"class_path": "L1Norm", "scopes": ["layer"]}]
    pruning = {"round_to": 16, "bn_recalibration": 2}
    config = sweep(base, [0.15, 0.2], [[3, 5, 8]], criteria=layer, pruning=pruning)
    run = run_sweep(config, out, plots=False)
    assert [r.status for r in run.ran] == ["ok"] * 2
    return records(out)


def test_points_pruned_to_one_network_recalibrate_and_evaluate_it_once(
    digits_base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: dict[str, list[int]] = {"recalibrate": [], "evaluate": []}
    recalibrate, evaluate = memo_mod.recalibrate_batchnorm, memo_mod.evaluate_subset

    def recalibrated(*args: Any, **kwargs: Any) -> Any:
        calls["recalibrate"].append(1)
        return recalibrate(*args, **kwargs)

    def evaluated(*args: Any, **kwargs: Any) -> Any:
        calls["evaluate"].append(1)
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(memo_mod, "recalibrate_batchnorm", recalibrated)
    monkeypatch.setattr(memo_mod, "evaluate_subset", evaluated)
    memo_mod.MEMO.clear()
    shared = _same_network_sweep(digits_base, tmp_path / "shared")
    assert {k: len(v) for k, v in calls.items()} == {"recalibrate": 1, "evaluate": 2}

    with mock.patch.object(memo_mod.MEMO, "get", return_value=None):  # nothing reused
        alone = _same_network_sweep(digits_base, tmp_path / "alone")
    assert {k: len(v) for k, v in calls.items()} == {"recalibrate": 3, "evaluate": 6}
    first, second = (shared[name] for name in sorted(shared))
    assert first["after"]["macs"] == second["after"]["macs"]
    for name, bench in shared.items():  # the same figures as each point computing its own
        assert bench["accuracy_stages"] == alone[name]["accuracy_stages"]
        assert bench["after"]["accuracy"] == alone[name]["after"]["accuracy"]
    assert first["accuracy_stages"] == second["accuracy_stages"]
