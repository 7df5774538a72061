"""Sweep reporting: benchmark.json -> results.csv -> summary, report.md, plots, capl-report."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest

from capl.sweep import plots as plotting
from capl.sweep.cli import report_main
from capl.sweep.report import (
    BOOKKEEPING_COLUMNS,
    flatten,
    format_bytes,
    format_percent,
    format_speedup,
    normalise_row,
    read_results_csv,
    render_report,
    result_row,
    summarise,
    write_report,
    write_results_csv,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LAYERS = {  # resnet-like, in network order; natural sort must keep layer10 after layer2
    "conv1": 64,
    "layer1.0.conv1": 64,
    "layer1.0.conv2": 64,
    "layer2.0.conv1": 128,
    "layer2.0.conv2": 128,
    "layer10.conv": 256,
}
CRITERIA = ("OCAP", "L1Norm")
RATIOS = (0.3, 0.6)
SEEDS = (0, 1)
BASE_MACS = 1_814_000_000
BASE_PARAMS = 11_200_000
BASE_SIZE = 44_800_000
BASE_ACC = 0.95


def _latency(scale: float) -> dict:
    return {
        backend: {
            f"bs{bs}": {"median_ms": scale * bs * factor, "p90_ms": 1.1 * scale * bs * factor}
            for bs in (1, 32)
        }
        for backend, factor in (("torch", 2.0), ("onnxruntime", 1.5))
    }


def _model_block(acc: float, keep: float, scale: float) -> dict:
    return {
        "accuracy": acc,
        "accuracy_macro": acc - 0.01,
        "accuracy_per_class": {"3": acc, "5": acc - 0.02, "7": acc + 0.01},
        "macs": int(BASE_MACS * keep),
        "params": int(BASE_PARAMS * keep),
        "nonzero_params": int(BASE_PARAMS * keep),
        "size_bytes": int(BASE_SIZE * keep),
        "sparse_size_bytes": int(BASE_SIZE * keep),
        "latency_ms": _latency(scale),
        "peak_memory_bytes": 12_345_678,
        "peak_memory_method": "tracemalloc",
    }


def make_benchmark(strategy: str | None, ratio: float | None, seed: int) -> dict:
    """A realistic benchmark.json (schema in docs/ARCHITECTURE.md), deterministic per point."""
    rng = np.random.default_rng(zlib.crc32(f"{strategy}/{ratio}/{seed}".encode()))
    pruned = strategy is not None
    macs_removed = float(ratio + rng.uniform(-0.03, 0.03)) if pruned else 0.0
    keep = 1.0 - macs_removed
    theoretical = 1.0 / keep
    after_acc = float(BASE_ACC - (ratio * 0.2 + rng.uniform(0, 0.05) if pruned else 0.0))
    measured = {
        backend: {bs: float(theoretical * rng.uniform(0.6, 0.95)) for bs in ("bs1", "bs32")}
        for backend in ("torch", "onnxruntime")
    }
    per_layer = {}
    for i, (name, channels) in enumerate(LAYERS.items()):
        frac = 1.0 if not pruned else max(0.1, 1.0 - ratio * (0.5 + i / len(LAYERS)))
        per_layer[name] = {"before": channels, "after": round(channels * frac), "kind": "channels"}
    return {
        "capl_version": "0.1.0",
        "run": {
            "log_dir": f"runs/{strategy}-{ratio}-{seed}",
            "stage": "test",
            "created": "2025-01-01T00:00:00Z",
            "name": f"{strategy}-{ratio}-{seed}",
        },
        "model": "resnet18",
        "dataset": "digits",
        "classes": {"indices": [3, 5, 7], "names": ["three", "five", "seven"]},
        "criterion": {"name": strategy, "negative_slope": 0.01} if pruned else None,
        "ratio": ratio,
        "scope": "global",
        "target": "macs",
        "seed": seed,
        "retrain_epochs": 1,
        "before": _model_block(BASE_ACC, 1.0, 1.0),
        "after": _model_block(after_acc, keep, 1.0 / measured["torch"]["bs1"]),
        "realised": {
            "channels_removed": macs_removed * 0.8,
            "params_removed": min(0.99, macs_removed * 1.1),
            "macs_removed": macs_removed,
            "theoretical_speedup": theoretical,
            "measured_speedup": measured,
            "efficiency": {
                b: {bs: v / theoretical for bs, v in d.items()} for b, d in measured.items()
            },
        },
        "per_layer": per_layer,
        "timings_s": {
            "selection": float(rng.uniform(0.5, 2.0)) if pruned else 0.0,
            "removal": float(rng.uniform(0.1, 0.3)) if pruned else 0.0,
            "retraining": float(rng.uniform(3.0, 5.0)) if pruned else 0.0,
        },
        "environment": {
            "device": "cpu",
            "torch": "2.5.1",
            "threads": 2,
            "onnxruntime_threads": 2,
        },
    }


def make_rows() -> list[dict]:
    rows = [result_row("base", make_benchmark(None, None, 0), index=0, duration_s=3.5)]
    for strategy in CRITERIA:
        for ratio in RATIOS:
            for seed in SEEDS:
                point = f"{strategy}-r{ratio}-s{seed}"
                rows.append(
                    result_row(point, make_benchmark(strategy, ratio, seed), index=len(rows))
                )
    point = {
        "criterion": {"name": "OCAP"},
        "ratio": 0.6,
        "seed": 2,
        "scope": "global",
        "target": "macs",
        "retrain_epochs": 1,
        "classes": {"indices": [3, 5, 7]},
    }
    rows.append(
        result_row(
            "OCAP-r0.6-s2",
            error="Traceback ...\nRuntimeError: CUDA out of memory",
            point=point,
            index=len(rows),
        )
    )
    return rows


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    write_results_csv(make_rows(), tmp_path / "results.csv")
    return tmp_path


def test_flatten_keys() -> None:
    row = flatten(make_benchmark("OCAP", 0.3, 0))
    assert row["criterion.name"] == "OCAP"
    assert row["criterion.negative_slope"] == 0.01
    assert row["classes.indices"] == "3;5;7"
    assert row["classes.names"] == "three;five;seven"
    assert row["per_layer.layer1.0.conv1.before"] == 64
    assert isinstance(row["per_layer.layer1.0.conv1.after"], int)
    assert row["per_layer.conv1.kind"] == "channels"
    assert isinstance(row["realised.measured_speedup.torch.bs1"], float)
    assert isinstance(row["after.latency_ms.onnxruntime.bs32.median_ms"], float)
    assert row["after.accuracy_per_class.5"] == pytest.approx(row["after.accuracy"] - 0.02)
    assert row["timings_s.selection"] > 0
    assert not any(isinstance(v, dict | list) for v in row.values())
    base = flatten(make_benchmark(None, None, 0))
    assert base["criterion.name"] is None and "criterion" not in base


def test_csv_round_trip_preserves_values_and_types(folder: Path) -> None:
    rows = make_rows()
    back = read_results_csv(folder / "results.csv")
    assert len(back) == len(rows)
    header = (folder / "results.csv").read_text().splitlines()[0].split(",")
    lead = [c for c in BOOKKEEPING_COLUMNS if c in header]
    assert header[: len(lead)] == lead == ["point_id", "index", "status", "error", "duration_s"]
    layers = [c for c in header if c.startswith("per_layer.") and c.endswith(".before")]
    assert layers.index("per_layer.layer2.0.conv1.before") < layers.index(
        "per_layer.layer10.conv.before"
    )
    for original, restored in zip(rows, back):
        for key, value in original.items():
            got = restored[key]
            assert got == value, key
            assert type(got) is type(value), key
        assert all(restored[k] is None for k in restored.keys() - original.keys())
    assert back[0]["criterion.name"] is None
    assert back[-1]["status"] == "failed"
    assert back[-1]["error"].endswith("CUDA out of memory")
    assert back[-1]["after.accuracy"] is None


def test_summarise_mean_std_over_seeds() -> None:
    rows = make_rows()
    summary = summarise(rows)
    assert summary[0]["criterion"] is None  # baseline first
    assert [g["criterion"] for g in summary[1:]] == ["OCAP", "OCAP", "L1Norm", "L1Norm"]
    for group in summary[1:]:
        mine = [
            r
            for r in rows
            if r["criterion.name"] == group["criterion"]
            and r["ratio"] == group["ratio"]
            and r["status"] == "ok"
        ]
        assert group["count"] == len(SEEDS) and sorted(group["seeds"]) == list(SEEDS)
        for metric in (
            "after.accuracy",
            "realised.macs_removed",
            "realised.measured_speedup.onnxruntime.bs32",
            "timings_s.retraining",
            "after.size_bytes",
        ):
            values = np.array([r[metric] for r in mine], dtype=float)
            stat = group["metrics"][metric]
            assert stat["mean"] == pytest.approx(values.mean())
            assert stat["std"] == pytest.approx(values.std(ddof=1))
            assert stat["count"] == len(SEEDS)
        kept = np.array([r["per_layer.layer2.0.conv2.after"] / 128 for r in mine])
        assert group["per_layer"]["layer2.0.conv2"]["mean"] == pytest.approx(kept.mean())
    failed = [g for g in summary if g["failed"]]
    assert len(failed) == 1 and failed[0]["criterion"] == "OCAP" and failed[0]["ratio"] == 0.6
    assert failed[0]["count"] == 2 and "CUDA out of memory" in failed[0]["errors"][0][1]


def test_formatting() -> None:
    assert format_percent(0.93214) == "93.21"
    assert format_percent(0.9, 0.0123) == "90.00 ± 1.23"
    assert format_bytes(512) == "512 B"
    assert format_bytes(1536) == "1.50 KiB"
    assert format_bytes(44_800_000) == "42.72 MiB"
    assert format_speedup(1.8349) == "1.83x"
    assert format_speedup(None) == "-"
    assert format_speedup(1.8349, 0.123) == "1.83x ± 0.12"
    assert format_bytes(1536, 512) == "1.50 ± 0.50 KiB"
    assert format_bytes(None, 1.0) == "-" and format_percent(None) == "-"


def test_selection_time_averages_only_points_that_computed_scores(tmp_path: Path) -> None:
    rows = []
    for seed, (selection, cached) in enumerate(((4.0, False), (0.01, True), (2.0, False))):
        row = result_row(f"OCAP-s{seed}", make_benchmark("OCAP", 0.3, seed), scores_cached=cached)
        row["timings_s.selection"] = selection
        rows.append(row)
    write_results_csv(rows, tmp_path / "results.csv")
    (group,) = summarise(read_results_csv(tmp_path / "results.csv"))
    selection = group["metrics"]["timings_s.selection"]
    assert selection["mean"] == pytest.approx(3.0) and selection["count"] == 2
    assert group["metrics"]["timings_s.removal"]["count"] == 3  # other phases keep every run
    report = render_report(rows)
    assert "| 3.00 ± 1.41 |" in report  # the overhead table shows computed selections only


def test_report_contents(folder: Path) -> None:
    rows = read_results_csv(folder / "results.csv")
    text = render_report(rows)
    summary = summarise(rows)
    assert "## Baseline" in text and "## Failed points" in text
    for criterion in CRITERIA:
        assert f"## {criterion}" in text
    assert f"| {format_percent(BASE_ACC)} |" in text  # baseline accuracy, "95.00"
    assert format_bytes(BASE_SIZE) in text
    group = next(g for g in summary if g["criterion"] == "L1Norm" and g["ratio"] == 0.6)
    acc = group["metrics"]["after.accuracy"]
    assert format_percent(acc["mean"], acc["std"]) in text
    speed = group["metrics"]["realised.measured_speedup.torch.bs32"]
    assert format_speedup(speed["mean"], speed["std"]) in text
    theo = group["metrics"]["realised.theoretical_speedup"]
    assert format_speedup(theo["mean"], theo["std"]) in text
    size = group["metrics"]["after.size_bytes"]
    assert format_bytes(size["mean"], size["std"]) in text
    macs = group["metrics"]["realised.macs_removed"]
    assert format_percent(macs["mean"], macs["std"], digits=1) in text
    assert "Measured onnxruntime bs1" in text and "Theoretical speed-up" in text
    assert "OCAP-r0.6-s2" in text and "RuntimeError: CUDA out of memory" in text
    assert "Grid points: 10 (9 ok, 1 failed)" in text
    assert "| Selection | Removal | Retraining |" in text


def _check_pngs(paths: list[Path]) -> None:
    names = sorted(p.name for p in paths)
    assert names == sorted(plotting.PLOT_FILES.values())
    for path in paths:
        data = path.read_bytes()
        assert data[:8] == PNG_MAGIC, path
        assert len(data) > 20_000, path  # real figures, not a blank canvas


def test_write_report_and_cli(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    written = write_report(folder)
    _check_pngs([p for p in written if p.suffix == ".png"])
    report = (folder / "report.md").read_text()
    for name in plotting.PLOT_FILES.values():
        assert f"({name})" in report
    assert read_results_csv(folder / "summary.csv")[1]["after.accuracy.count"] == 2

    for path in folder.glob("*.png"):
        path.unlink()
    (folder / "report.md").unlink()
    assert report_main([str(folder)]) == 0
    assert "report.md" in capsys.readouterr().out
    _check_pngs(sorted(folder.glob("*.png")))
    assert (folder / "report.md").read_text() == report
    assert not list(folder.glob(".*.tmp"))


def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(SystemExit) as exc:
        report_main([str(missing)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "results.csv" in err
    assert err.startswith("capl-report: error: ")
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err

    with pytest.raises(SystemExit) as exc:
        report_main([str(tmp_path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "results.csv") in err and len(err.strip().splitlines()) == 1

    for content in ("", "point_id,status,error\n"):
        (tmp_path / "results.csv").write_text(content)
        with pytest.raises(SystemExit) as exc:
            report_main([str(tmp_path)])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert str(tmp_path / "results.csv") in err and "no rows" in err


def test_only_failures_still_reports(tmp_path: Path) -> None:
    row = result_row("x", error="boom", point={"criterion": {"name": "OCAP"}, "ratio": 0.5})
    write_results_csv([row], tmp_path / "results.csv")
    written = write_report(tmp_path)
    assert [p.name for p in written] == ["summary.csv", "report.md"]
    text = (tmp_path / "report.md").read_text()
    assert "boom" in text and "0 ok, 1 failed" in text


def _implementation_shape(benchmark: dict) -> dict:
    """The point as capl.benchmark writes it: nested speed-ups, bare batch keys, layer tables."""
    out = dict(benchmark)
    for side in ("before", "after"):
        block = dict(out[side])
        block["latency_ms"] = {
            b: {k.removeprefix("bs"): v for k, v in d.items()}
            for b, d in block["latency_ms"].items()
        }
        block["layers"] = {n: {"type": "Conv2d", "out_channels": c} for n, c in LAYERS.items()}
        out[side] = block
    realised = dict(out["realised"])
    measured = realised.pop("measured_speedup")
    realised.pop("efficiency")
    realised["speedup"] = {
        b: {
            k.removeprefix("bs"): {"measured": v, "efficiency": v / realised["theoretical_speedup"]}
            for k, v in d.items()
        }
        for b, d in measured.items()
    }
    out["realised"] = realised
    out["per_layer"] = {
        n: {
            "type": "Conv2d",
            "out_channels_before": e["before"],
            "out_channels_after": e["before"],
            "live_out_channels_before": e["before"],
            "live_out_channels_after": e["after"],
        }
        for n, e in benchmark["per_layer"].items()
    }
    return out


def test_implementation_schema_variant_is_normalised(tmp_path: Path) -> None:
    original = make_benchmark("OCAP", 0.6, 0)
    row = flatten(_implementation_shape(original))
    assert not any(k.startswith(("before.layers.", "after.layers.")) for k in row)
    assert "realised.speedup.torch.32.measured" in row
    canonical = normalise_row(row)
    expected = flatten(original)
    for key in (
        "realised.measured_speedup.torch.bs32",
        "realised.efficiency.onnxruntime.bs1",
        "after.latency_ms.torch.bs1.median_ms",
        "per_layer.layer2.0.conv1.before",
        "per_layer.layer2.0.conv1.after",  # live channels, not the unmasked count
    ):
        assert canonical[key] == pytest.approx(expected[key]), key
    rows = [
        result_row(f"p{s}", _implementation_shape(make_benchmark("OCAP", 0.6, s))) for s in SEEDS
    ]
    text = render_report(rows)
    assert "Measured torch bs32" in text and "Measured torch 32" not in text
    group = summarise(rows)[0]
    assert "after.latency_ms.torch.32.median_ms" not in group["metrics"]
    assert group["per_layer"]["layer10.conv"]["count"] == len(SEEDS)


def test_per_layer_keeps_network_order_through_csv(tmp_path: Path) -> None:
    network_order = ["features.0", "features.3", "features.10", "classifier.1"]  # not sorted
    benchmark = make_benchmark("OCAP", 0.3, 0)
    benchmark["per_layer"] = {
        name: {"before": 16, "after": 8, "kind": "channels"} for name in network_order
    }
    write_results_csv([result_row("p", benchmark)], tmp_path / "results.csv")
    header = (tmp_path / "results.csv").read_text().splitlines()[0].split(",")
    layers = [c.rsplit(".", 1)[0] for c in header if c.startswith("per_layer.")]
    assert list(dict.fromkeys(layers)) == [f"per_layer.{n}" for n in network_order]
    (group,) = summarise(read_results_csv(tmp_path / "results.csv"))
    assert list(group["per_layer"]) == network_order
    assert group["per_layer"]["classifier.1"]["mean"] == pytest.approx(0.5)


def test_busy_latencies_are_marked(tmp_path: Path) -> None:
    rows = make_rows()[:5]  # base + OCAP at both ratios and seeds
    busy = make_benchmark("OCAP", 0.3, 1)
    busy["after"]["latency_ms"]["onnxruntime"]["bs32"]["busy"] = True
    rows[2] = result_row("OCAP-r0.3-s1", busy, index=2)
    for row in rows[:2] + rows[3:]:  # flags of the calm runs are false
        row["after.latency_ms.onnxruntime.bs32.busy"] = False
    write_results_csv(rows, tmp_path / "results.csv")
    rows = read_results_csv(tmp_path / "results.csv")
    summary = summarise(rows)
    flagged = {(g["criterion"], g["ratio"]): g["busy"] for g in summary}
    assert flagged == {
        (None, None): [],
        ("OCAP", 0.3): [("onnxruntime", "bs32")],
        ("OCAP", 0.6): [],
    }
    text = render_report(rows)
    group = next(g for g in summary if g["ratio"] == 0.3)
    speed = group["metrics"]["realised.measured_speedup.onnxruntime.bs32"]
    assert f"| {format_speedup(speed['mean'], speed['std'])}† |" in text
    assert text.count("† |") == 1  # only that cell


def _legacy(benchmark: dict) -> dict:
    """benchmark.json as capl 0.1.0 wrote it: the criterion under "strategy"."""
    out = dict(benchmark)
    out["strategy"] = out.pop("criterion")
    return out


def test_records_and_results_of_the_old_strategy_key_still_report(tmp_path: Path) -> None:
    old = _legacy(make_benchmark("OCAP", 0.3, 0))
    assert flatten(old)["criterion.name"] == "OCAP" and "strategy.name" not in flatten(old)
    assert flatten(_legacy(make_benchmark(None, None, 0)))["criterion.name"] is None
    # a results.csv written by that release: columns strategy.name, strategy.negative_slope
    rows = []
    for row in make_rows():
        rows.append({k.replace("criterion.", "strategy.", 1): v for k, v in row.items()})
    assert "strategy.name" in rows[1] and "criterion.name" not in rows[1]
    write_results_csv(rows, tmp_path / "results.csv")
    assert read_results_csv(tmp_path / "results.csv")[0]["strategy.name"] is None
    assert report_main([str(tmp_path)]) == 0
    text = (tmp_path / "report.md").read_text()
    plots = list(plotting.PLOT_FILES.values())
    assert text == render_report(make_rows(), plots)  # the report of the current spelling
    for criterion in CRITERIA:
        assert f"## {criterion}" in text
    assert "- Criteria: OCAP, L1Norm" in text
    summary = read_results_csv(tmp_path / "summary.csv")
    assert [r["criterion.name"] for r in summary] == [None, "OCAP", "OCAP", "L1Norm", "L1Norm"]
