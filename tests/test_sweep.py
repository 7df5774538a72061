"""capl-sweep: grid, point ids, the in-process runner, resume, failures, job arrays, configs.

Everything runs on tiny digits subsets with a CIFAR ResNet-20, one batch size, torch latency only
and one or two timed repeats, so the whole file stays well under three minutes on two cores.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from capl.errors import ConfigError
from capl.pruning import latency_table as latency_table_mod
from capl.sweep import read_results_csv
from capl.sweep import runner as runner_mod
from capl.sweep.cli import sweep_main
from capl.sweep.grid import expand_grid, load_sweep_config, make_point_id, parse_sweep_config
from capl.sweep.points import LATENCY_DIR, point_config
from capl.sweep.report import flatten
from capl.sweep.runner import RESULT_FILE, run_sweep

ROOT = Path(__file__).resolve().parents[1]

BENCH = {"batch_sizes": [1], "backends": ["torch"], "warmup": 0, "repeats": 1, "min_time_s": 0}
DATA = {
    "class_path": "DigitsSubset",
    "init_args": {"batch_size": 32, "samples_per_class": 20, "calibration_samples_per_class": 4},
}


def sweep_dict(base: dict[str, Any], criteria: list[Any], ratios: list[float]) -> dict[str, Any]:
    return {
        "name": "test",
        "base": base,
        "data": DATA,
        "grid": {"criteria": criteria, "ratios": ratios, "classes": [[3, 5, 8]]},
        "benchmark": BENCH,
    }


def train_base() -> dict[str, Any]:
    return {
        "network": "resnet20",
        "small_input": True,
        "num_classes": 10,
        "train": {
            "max_epochs": 1,
            "optimizer": {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.05}},
        },
    }


def write(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def serial(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A 2-criterion x 2-ratio sweep run serially, training its base model."""
    folder = tmp_path_factory.mktemp("serial")
    cfg_path = write(
        folder / "sweep.yaml", sweep_dict(train_base(), ["L1Norm", "OCAP"], [0.3, 0.5])
    )
    config = load_sweep_config(cfg_path)
    out = folder / "out"
    run = run_sweep(config, out, plots=False)
    # records hold paths relative to the sweep folder
    base = str(out / json.loads(next((out / "base").glob("*/base.json")).read_text())["checkpoint"])
    return {"config": config, "out": out, "run": run, "base": base, "path": cfg_path}


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return (
            a is not None
            and b is not None
            and math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
        )
    if isinstance(b, bool) or isinstance(a, bool):
        return str(a) == str(b)
    return a == b or str(a) == str(b)


def test_serial_sweep_rows_equal_benchmark_json(serial: dict[str, Any]) -> None:
    run, out = serial["run"], serial["out"]
    assert [r.status for r in run.ran] == ["ok"] * 4
    rows = read_results_csv(out / "results.csv")
    assert [r["point_id"] for r in rows] == [p.point_id for p in run.points]
    assert rows[0]["point_id"] == "l1norm-global-none-r0.30-c3_5_8-s0-e0"
    for row in rows:
        bench = json.loads((out / "points" / row["point_id"] / "benchmark.json").read_text())
        assert bench["run"]["name"] == row["point_id"]
        flat = flatten(bench)
        mismatched = [
            k
            for k, v in flat.items()
            if not _close(row.get(k), v) and not (v in (None, "") and row.get(k) in (None, ""))
        ]
        assert mismatched == []
        # per-layer columns keep benchmark.json's network order through results.csv
        layers = [k.rsplit(".", 1)[0] for k in row if k.startswith("per_layer.")]
        assert list(dict.fromkeys(layers)) == [f"per_layer.{n}" for n in bench["per_layer"]]
        assert (out / "points" / row["point_id"] / "config.yaml").is_file()
        assert (out / "tb" / row["point_id"]).is_dir()
    assert (out / "report.md").is_file()


def test_scores_computed_once_per_criterion(serial: dict[str, Any]) -> None:
    out = serial["out"]
    assert len(list((out / "scores").glob("*.pt"))) == 2  # L1Norm and OCAP, not 4
    cached = {r.point_id: r.scores_cached for r in serial["run"].ran}
    assert [cached[p.point_id] for p in serial["run"].points] == [False, True, False, True]
    rows = read_results_csv(out / "results.csv")  # the report needs the flag per row
    assert [r["scores_cached"] for r in rows] == [False, True, False, True]


def test_rerun_skips_finished_and_redoes_a_lost_record(serial: dict[str, Any]) -> None:
    out, config = serial["out"], serial["config"]
    lost = serial["run"].points[1].point_id
    (out / "points" / lost / RESULT_FILE).unlink()
    run = run_sweep(config, out, plots=False)
    assert [r.point_id for r in run.ran] == [lost]
    assert len(run.already_done) == 3
    rows = read_results_csv(out / "results.csv")
    assert sorted(r["point_id"] for r in rows) == sorted(p.point_id for p in run.points)


def test_interrupted_sweep_resumes_without_duplicates(
    serial: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = {
        "network": "resnet20",
        "small_input": True,
        "num_classes": 10,
        "checkpoint": serial["base"],
    }
    config = parse_sweep_config(sweep_dict(base, ["L1Norm"], [0.3, 0.5]))
    real = runner_mod.run_point
    calls = []

    def killed(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the job is killed during the second point
        return real(*args, **kwargs)

    monkeypatch.setattr(runner_mod, "run_point", killed)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(config, tmp_path, plots=False)
    monkeypatch.setattr(runner_mod, "run_point", real)
    run = run_sweep(config, tmp_path, plots=False)
    assert len(run.already_done) == 1 and len(run.ran) == 1
    rows = read_results_csv(tmp_path / "results.csv")
    assert [r["point_id"] for r in rows] == [p.point_id for p in run.points]
    assert all(r["status"] == "ok" for r in rows)


def test_failing_points_are_recorded_and_retried(
    serial: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import capl.criteria

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("collect exploded")

    def user_error(*args: Any, **kwargs: Any) -> Any:
        raise ConfigError("bad taylor setting: fix it")  # the CLI turns it into SystemExit(2)

    monkeypatch.setattr(capl.criteria.OCAP, "collect", boom)
    monkeypatch.setattr(capl.criteria.Taylor, "score", user_error)
    base = {
        "network": "resnet20",
        "small_input": True,
        "num_classes": 10,
        "checkpoint": serial["base"],
    }
    config = parse_sweep_config(sweep_dict(base, ["OCAP", "Taylor", "L1Norm"], [0.5]))
    run = run_sweep(config, tmp_path, plots=False)
    status = {r.point_id.split("-")[0]: r for r in run.ran}
    assert status["l1norm"].status == "ok"
    assert status["ocap"].status == "failed" and "collect exploded" in status["ocap"].error
    assert status["taylor"].error == "bad taylor setting: fix it"
    assert (tmp_path / "points" / status["ocap"].point_id / "traceback.txt").is_file()
    rows = {r["point_id"]: r for r in read_results_csv(tmp_path / "results.csv")}
    assert rows[status["ocap"].point_id]["status"] == "failed"
    assert rows[status["ocap"].point_id]["criterion.name"] == "OCAP"
    assert (
        sweep_main(
            [
                "--config",
                str(
                    write(
                        tmp_path / "s.yaml", sweep_dict(base, ["OCAP", "Taylor", "L1Norm"], [0.5])
                    )
                ),
                "--output",
                str(tmp_path),
                "--no-plots",
            ]
        )
        == 1
    )
    monkeypatch.undo()
    rerun = run_sweep(config, tmp_path, plots=False)
    assert sorted(r.point_id.split("-")[0] for r in rerun.ran) == ["ocap", "taylor"]
    assert all(r.status == "ok" for r in rerun.ran)


def test_job_array_indices_then_merge_equal_serial(serial: dict[str, Any], tmp_path: Path) -> None:
    base = {
        "network": "resnet20",
        "small_input": True,
        "num_classes": 10,
        "checkpoint": serial["base"],
    }
    cfg = write(tmp_path / "sweep.yaml", sweep_dict(base, ["OCAP"], [0.3, 0.5]))
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    procs = []
    for index in (0, 1):
        if index == 1:
            env["SLURM_ARRAY_TASK_ID"] = "1"  # the env var stands in for --index
            args = []
        else:
            args = ["--index", "0"]
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    "import sys; from capl.sweep.cli import sweep_main; "
                    "sys.exit(sweep_main(sys.argv[1:]))",
                    "--config",
                    str(cfg),
                    "--output",
                    str(out),
                    *args,
                ],
                env=env,
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
        )
    for proc in procs:
        text = proc.communicate(timeout=300)[0].decode()
        assert proc.returncode == 0, text[-2000:]
    assert not (out / "results.csv").exists()  # array tasks leave the merge to --merge
    assert sweep_main(["--config", str(cfg), "--output", str(out), "--merge", "--no-plots"]) == 0
    merged = read_results_csv(out / "results.csv")
    serial_rows = {r["point_id"]: r for r in read_results_csv(serial["out"] / "results.csv")}
    assert [r["point_id"] for r in merged] == [
        "ocap-global-none-r0.30-c3_5_8-s0-e0",
        "ocap-global-none-r0.50-c3_5_8-s0-e0",
    ]
    deterministic = (
        "after.accuracy",
        "before.accuracy",
        "after.macs",
        "after.params",
        "realised.macs_removed",
        "criterion.name",
        "ratio",
        "seed",
        "status",
        "per_layer.layer1.0.conv1.after",
    )
    for row in merged:
        for key in deterministic:
            assert row[key] == serial_rows[row["point_id"]][key], key


def test_point_ids_and_skips() -> None:
    assert (
        make_point_id("ocap", "global", "macs", 0.5, [3, 5, 8], 0, 0)
        == "ocap-global-macs-r0.50-c3_5_8-s0-e0"
    )
    assert (
        make_point_id("lrp", "layer", None, 0.125, "similar", 2, 1)
        == "lrp-layer-none-r0.125-csimilar-s2-e1"
    )
    long_id = make_point_id("x", "layer", None, 0.1, list(range(40)), 0, 0)
    assert len(long_id) < 80 and long_id == make_point_id(
        "x", "layer", None, 0.1, list(range(40)), 0, 0
    )
    config = parse_sweep_config(
        {
            "base": {
                "network": "resnet20",
                "small_input": True,
                "num_classes": 10,
                "checkpoint": "x.ckpt",
            },
            "data": DATA,
            "grid": {
                "criteria": ["Magnitude", "OCAP", {"class_path": "Random", "name": "rnd"}],
                "ratios": [0.0, 0.5],
                "scopes": ["layer", "global"],
                "seeds": [0, 1],
            },
        }
    )
    points, skipped = expand_grid(config)
    ids = [p.point_id for p in points]
    assert len(ids) == len(set(ids))
    zero = [p for p in points if p.ratio == 0.0]
    assert len(zero) == 2  # one per seed: ratio 0 is the same network for every criterion
    assert "magnitude-layer-none-r0.50-call-s1-e0" not in ids  # data-free, seed is moot
    assert "ocap-layer-none-r0.50-call-s1-e0" in ids
    assert "magnitude-layer-none-r0.50-call-s0-e0" in ids  # masks run with both scopes
    assert "magnitude-global-none-r0.50-call-s0-e0" in ids
    rnd = next(p for p in points if p.point_id == "rnd-global-none-r0.50-call-s1-e0")
    assert rnd.criterion_init_args() == {"seed": 1}
    assert any("prunes nothing" in s.reason for s in skipped)
    assert any("data-free" in s.reason for s in skipped)


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"grid": {"criteria": ["Nope"], "ratios": [0.5]}}, "unknown criterion 'Nope'"),
        ({"grid": {"criteria": ["OCAP"], "ratios": [1.5]}}, "not a fraction in [0, 1)"),
        ({"grid": {"criteria": ["OCAP"], "ratios": [0.5], "scopes": ["all"]}}, "unknown scope"),
        ({"benchmark": {"backends": ["tensorrt"]}}, "unknown ['tensorrt']"),
        ({"bogus": 1}, "unknown key(s) bogus"),
        ({"base": {"network": "resnet999"}}, "unknown network"),
    ],
)
def test_invalid_sweep_files_give_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], patch: dict[str, Any], message: str
) -> None:
    config = sweep_dict({"network": "resnet20", "checkpoint": "x.ckpt"}, ["OCAP"], [0.5])
    config.update(patch)
    path = write(tmp_path / "bad.yaml", config)
    with pytest.raises(SystemExit) as exc:
        sweep_main(["--config", str(path), "--output", str(tmp_path / "o"), "--dry-run"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and err.startswith("capl-sweep: error:")


def test_slurm_env_sets_the_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    seen = {}

    def fake(config: Any, output: Any, **kwargs: Any) -> Any:
        seen.update(kwargs)
        return runner_mod.SweepRun(points=[], skipped=[])

    monkeypatch.setattr(runner_mod, "run_sweep", fake)
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    path = write(
        tmp_path / "s.yaml",
        sweep_dict({"network": "resnet20", "checkpoint": "x.ckpt"}, ["OCAP"], [0.5]),
    )
    assert sweep_main(["--config", str(path), "--output", str(tmp_path / "o")]) == 0
    assert seen["index"] == 3
    assert sweep_main(["--config", str(path), "--output", str(tmp_path / "o"), "--index", "1"]) == 0
    assert seen["index"] == 1


# Every experiment config is parsed, listed and run (a tiny slice) in tests/test_configs.py.


def test_demo_runs_every_criterion() -> None:
    from capl.criteria import available_criteria

    config = load_sweep_config(ROOT / "configs" / "experiments" / "demo.yaml")
    points, _ = expand_grid(config)
    names = {p.criterion.class_name for p in points}
    assert names == set(available_criteria())
    # one retraining budget: each point records pruned, recalibrated and retrained accuracy
    assert {p.retrain_epochs for p in points} == {4}
    assert config.pruning["bn_recalibration"] > 0
    assert config.data["init_args"]["image_size"] == 32
    assert len({p.ratio for p in points}) == 3


@pytest.mark.parametrize(
    ("name", "command"),
    [
        ("default.yaml", "fit"),
        ("runs/base_test.yaml", "test"),
        ("runs/prune_test.yaml", "test"),
        ("runs/prune_retrain.yaml", "fit"),
    ],
)
def test_run_configs_parse(name: str, command: str, capsys: pytest.CaptureFixture[str]) -> None:
    from capl.cli import main

    with pytest.raises(SystemExit) as exc:
        main([command, "--config", str(ROOT / "configs" / name), "--print_config"])
    assert exc.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["network"] == "resnet18"


def test_ctrl_c_inside_lightning_stops_the_sweep(monkeypatch: pytest.MonkeyPatch) -> None:
    import signal

    import capl.cli

    def lightning_like(args: Any) -> None:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # what Lightning does on Ctrl-C
            sys.exit(1)

    monkeypatch.setattr(capl.cli, "main", lightning_like)
    with pytest.raises(KeyboardInterrupt):
        runner_mod._capl(["test"])
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_set_overrides_change_the_grid_and_reject_bad_items(tmp_path: Path, capsys) -> None:
    from capl.sweep.cli import sweep_main
    from capl.sweep.grid import apply_overrides

    raw = {"grid": {"ratios": [0.3, 0.5]}, "data": {"init_args": {}}}
    out = apply_overrides(raw, ["grid.ratios=[0.7]", "data.init_args.samples_per_class=30"])
    assert out["grid"]["ratios"] == [0.7]
    assert out["data"]["init_args"]["samples_per_class"] == 30
    assert raw["grid"]["ratios"] == [0.3, 0.5]  # the parsed file is left alone
    config = ROOT / "configs" / "experiments" / "fashion_similar_distinct.yaml"
    args = ["--config", str(config), "--output", str(tmp_path / "o"), "--dry-run"]
    assert sweep_main([*args, "--set", "grid.ratios=[0.5]", "--set", "grid.seeds=[0]"]) == 0
    listing = capsys.readouterr().out
    assert listing.startswith("16 points")  # 8 criteria x 1 ratio x 2 subsets x 1 seed
    with pytest.raises(SystemExit) as info:
        sweep_main([*args, "--set", "grid.ratios"])
    assert info.value.code == 2
    assert "write KEY=VALUE" in capsys.readouterr().err


def test_latency_target_points_carry_the_latency_spec(tmp_path: Path) -> None:
    raw = sweep_dict({"network": "resnet20", "small_input": True, "num_classes": 10,
                      "checkpoint": str(tmp_path / "base.ckpt")}, ["L1Norm"], [0.5])  # fmt: skip
    raw["grid"]["targets"] = ["latency"]
    spec = {"backend": "torch", "batch_size": 4, "cache": str(tmp_path / "latency")}
    raw["pruning"] = {"latency": spec}
    config = parse_sweep_config(raw)
    assert [p.target for p in expand_grid(config)[0]] == ["latency"]
    assert config.pruning["latency"] == spec
    raw["grid"]["targets"] = ["flops"]
    with pytest.raises(ConfigError, match="macs, params and/or latency"):
        parse_sweep_config(raw)


def _pruning_init(config: Any, point: Any, output: Path) -> dict[str, Any]:
    run = point_config(config, point, "base.ckpt", output)
    (callback,) = [
        c for c in run["trainer"]["callbacks"] if c["class_path"].endswith("PruningCallback")
    ]
    return callback["init_args"]


def test_latency_points_share_a_table_in_the_sweep_folder(tmp_path: Path) -> None:
    raw = sweep_dict({"network": "resnet20", "small_input": True, "num_classes": 10,
                      "checkpoint": str(tmp_path / "base.ckpt")}, ["L1Norm"], [0.5])  # fmt: skip
    raw["grid"]["targets"] = ["latency", "macs"]
    raw["pruning"] = {"latency": {"backend": "torch", "batch_size": 4}}
    config = parse_sweep_config(raw)
    latency, macs = expand_grid(config)[0]
    out = tmp_path / "out"
    # no cache named: the sweep keeps the table in OUTPUT/latency, the spec's settings stay
    expected = {"cache": str(out / LATENCY_DIR), "backend": "torch", "batch_size": 4}
    assert _pruning_init(config, latency, out)["latency"] == expected
    assert _pruning_init(config, macs, out)["latency"] == expected  # it predicts with the table
    # a named cache, or an explicit null (measure every time), is the user's
    for cache in (str(tmp_path / "mine"), None):
        raw["pruning"] = {"latency": {"cache": cache}}
        config = parse_sweep_config(raw)
        assert _pruning_init(config, expand_grid(config)[0][0], out)["latency"] == {"cache": cache}
    # no latency section: a latency point gets the default spec with the folder, others nothing
    raw["pruning"] = {}
    config = parse_sweep_config(raw)
    latency, macs = expand_grid(config)[0]
    assert _pruning_init(config, latency, out)["latency"] == {"cache": str(out / LATENCY_DIR)}
    assert "latency" not in _pruning_init(config, macs, out)


def test_latency_sweep_measures_the_table_once(
    serial: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    measured = []
    measure = latency_table_mod._measure
    monkeypatch.setattr(
        latency_table_mod, "_measure", lambda *a, **k: measured.append(1) or measure(*a, **k)
    )
    base = {"network": "resnet20", "small_input": True, "num_classes": 10,
            "checkpoint": serial["base"]}  # fmt: skip
    raw = sweep_dict(base, [{"class_path": "L1Norm", "scopes": ["layer"]}], [0.1, 0.15])
    raw["grid"]["targets"] = ["latency"]
    # batch 64: at 8x8 a smaller batch's layer times are mostly call overhead
    raw["pruning"] = {"latency": {"backend": "torch", "batch_size": 64, "threads": 1,
                                  "repeats": 3}}  # fmt: skip
    out = tmp_path / "out"
    run = run_sweep(parse_sweep_config(raw), out, plots=False)
    assert [r.status for r in run.ran] == ["ok", "ok"]
    assert measured == [1]  # the first point measured it, the second read it
    assert len(list((out / LATENCY_DIR).glob("latency-*.json"))) == 1
    for point in run.points:
        plan = json.loads((out / "tb" / point.point_id / "pruning_plan.json").read_text())
        selection = plan["report"]["selection"]
        assert selection["target"] == "latency" and selection["predicted_latency_ms"] > 0
