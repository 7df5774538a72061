"""Bad input to every command: one line naming problem and fix, exit 2, no traceback, no files.

Each case of the table hands ``capl``, ``capl-sweep``, ``capl-report`` or ``capl-sensitivity``
(their real entry points, in process) one thing that is wrong: a config, a file (pickled code,
truncated, garbage, not a checkpoint), an output that cannot be written, settings writing outside
the sweep folder. Every case checks that

* the command exits with code 2 and prints exactly one ``<prog>: error:`` line that names the
  problem (``expect``), and no traceback;
* nothing was written: the run's log folder and the sweep/sensitivity output do not exist;
* no code from a file ran: the marker file the pickled payload would create is absent.
"""

from __future__ import annotations

import argparse
import copy
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from capl.cli import main
from capl.models import build_network
from capl.sweep.cli import report_main, sensitivity_main, sweep_main
from capl.sweep.report import write_results_csv
from tests.test_report import make_rows


class _Payload:
    """Unpickling this runs ``os.system`` (what a malicious weights file does)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


@dataclass
class Files:
    """The files the cases hand the commands."""

    root: Path
    marker: Path
    evil: Path
    truncated: Path
    garbage: Path
    empty: Path
    not_state: Path
    folder: Path
    state_dict: Path
    checkpoint: Path
    a_file: Path
    config: Path


DATA = {
    "class_path": "DigitsSubset",
    "init_args": {
        "classes": [3, 5, 8],
        "batch_size": 32,
        "samples_per_class": 20,
        "calibration_samples_per_class": 4,
    },
}
BENCH = {"batch_sizes": [1], "backends": ["torch"], "warmup": 0, "repeats": 1, "min_time_s": 0}


def _run_config(root: Path) -> dict[str, Any]:
    return {
        "seed_everything": 0,
        "data": copy.deepcopy(DATA),
        "model": {"network": "resnet20", "small_input": True, "num_classes": 10},
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "max_epochs": 1,
            "limit_train_batches": 2,
            "limit_val_batches": 1,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "logger": {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": str(root / "runs"), "name": "t"},
            },
        },
    }


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    root = tmp_path_factory.mktemp("bad_input")
    marker = root / "pwned"
    torch.manual_seed(0)
    state = build_network("resnet20", 10, small_input=True).state_dict()
    torch.save({"state_dict": state, "payload": _Payload(marker)}, root / "evil.pt")
    torch.save(state, root / "state.pt")
    good = (root / "state.pt").read_bytes()
    (root / "truncated.pt").write_bytes(good[: len(good) // 2])
    (root / "garbage.pt").write_bytes(b"this is not a checkpoint\n" * 40)
    (root / "empty.pt").write_bytes(b"")
    torch.save([1, 2, 3], root / "list.pt")
    (root / "folder.pt").mkdir()
    (root / "a_file").write_text("a file, not a folder\n")
    config = root / "run.yaml"
    config.write_text(yaml.safe_dump(_run_config(root / "fit")))
    fitted = main(["fit", "--config", str(config)])
    assert fitted is not None
    checkpoint = Path(fitted.trainer.checkpoint_callback.best_model_path)
    assert checkpoint.is_file() and not marker.exists()
    return Files(
        root=root,
        marker=marker,
        evil=root / "evil.pt",
        truncated=root / "truncated.pt",
        garbage=root / "garbage.pt",
        empty=root / "empty.pt",
        not_state=root / "list.pt",
        folder=root / "folder.pt",
        state_dict=root / "state.pt",
        checkpoint=checkpoint,
        a_file=root / "a_file",
        config=config,
    )


# --------------------------------------------------------------------------------------------
# The four commands, as the cases call them


def _capl(tmp: Path, f: Files, *extra: str, command: str = "test") -> list[str]:
    return [command, "--config", str(f.config), *_logs(tmp), *extra]


def _logs(tmp: Path) -> list[str]:
    return ["--trainer.logger.init_args.save_dir", str(tmp / "runs")]


def _pruning(tmp: Path, benchmark: dict | None = None, **pruning: Any) -> Path:
    """A config adding a PruningCallback (L1Norm, ratio 0.3) and a quick BenchmarkCallback."""
    callbacks = [
        {
            "class_path": "PruningCallback",
            "init_args": {"criterion": {"class_path": "L1Norm"}, "ratio": 0.3, **pruning},
        },
        {"class_path": "BenchmarkCallback", "init_args": {**BENCH, **(benchmark or {})}},
    ]
    path = tmp / "pruning.yaml"
    path.write_text(yaml.safe_dump({"trainer": {"callbacks": callbacks}}))
    return path


def _yaml(tmp: Path, name: str, content: Any) -> Path:
    path = tmp / name
    path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    return path


def _sweep_dict(f: Files) -> dict[str, Any]:
    return {
        "name": "bad",
        "base": {
            "network": "resnet20",
            "small_input": True,
            "num_classes": 10,
            "checkpoint": str(f.state_dict),
        },
        "data": copy.deepcopy(DATA),
        "grid": {"criteria": ["L1Norm"], "ratios": [0.3]},
        "benchmark": BENCH,
    }


def _sweep(tmp: Path, f: Files, change: Callable[[dict], None], *extra: str) -> list[str]:
    config = _sweep_dict(f)
    change(config)
    path = _yaml(tmp, "sweep.yaml", config)
    return ["--config", str(path), "--output", str(tmp / "out"), *extra]


def _sensitivity(tmp: Path, f: Files, change: Callable[[dict], None]) -> list[str]:
    config = {
        "base": {
            "network": "resnet20",
            "small_input": True,
            "num_classes": 10,
            "checkpoint": str(f.state_dict),
        },
        "data": copy.deepcopy(DATA),
        "criterion": "L1Norm",
        "ratios": [0.5],
        "layers": ["conv1"],
    }
    change(config)
    path = _yaml(tmp, "sensitivity.yaml", config)
    return ["--config", str(path), "--output", str(tmp / "out")]


def _results(tmp: Path, damage: Callable[[str], str]) -> list[str]:
    folder = tmp / "out"
    write_results_csv(make_rows(), folder / "results.csv")
    text = (folder / "results.csv").read_text()
    (folder / "results.csv").write_text(damage(text))
    return [str(folder)]


def _set(path: str, value: Any) -> Callable[[dict], None]:
    def change(config: dict) -> None:
        *parents, last = path.split(".")
        node = config
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value

    return change


def _train_base_with_checkpoints_in(folder: Path) -> Callable[[dict], None]:
    def change(config: dict) -> None:
        del config["base"]["checkpoint"]
        callback = {"class_path": "ModelCheckpoint", "init_args": {"dirpath": str(folder)}}
        config["base"]["train"] = {"max_epochs": 1, "trainer": {"callbacks": [callback]}}

    return change


def _cut_mid_row(text: str) -> str:
    lines = text.splitlines(keepends=True)
    return "".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2]


def _extra_cell(text: str) -> str:
    lines = text.splitlines(keepends=True)
    lines[2] = lines[2].rstrip("\n") + ",surplus\n"
    return "".join(lines)


def _open_quote(text: str) -> str:
    lines = text.splitlines(keepends=True)
    return "".join(lines[:2]) + '"' + lines[2] + "".join(lines[3:])


def _bad_status(text: str) -> str:
    header, *rows = text.splitlines(keepends=True)
    column = header.rstrip("\n").split(",").index("status")
    cells = rows[0].rstrip("\n").split(",")
    cells[column] = "0.93"
    return header + ",".join(cells) + "\n" + "".join(rows[1:])


# --------------------------------------------------------------------------------------------
# The table: (id, command, arguments, words the one error line must contain)

Build = Callable[[Path, Files], list[str]]
CAPL, SWEEP, REPORT, SENSITIVITY = "capl", "capl-sweep", "capl-report", "capl-sensitivity"
criteria = "L1Norm, LRP, Magnitude, OCAP"

CASES: list[tuple[str, str, Build, list[str]]] = [
    # capl: configs and options
    (
        "misspelt-subcommand",
        CAPL,
        lambda t, f: _capl(t, f, command="tset"),
        ["invalid choice: 'tset'", "'test'", "see capl --help"],
    ),
    (
        "unknown-criterion",
        CAPL,
        lambda t, f: _capl(t, f, "--config", str(_pruning(t, criterion={"class_path": "Foo"}))),
        ["unknown criterion 'Foo'", criteria],
    ),
    (
        "criterion-not-a-criterion",
        CAPL,
        lambda t, f: _capl(
            t, f, "--config", str(_pruning(t, criterion={"class_path": "torch.nn.ReLU"}))
        ),
        ["torch.nn.ReLU", criteria],
    ),
    (
        "ratio-not-a-number",
        CAPL,
        lambda t, f: _capl(t, f, "--config", str(_pruning(t, ratio="half"))),
        ["ratio", "half", "float"],
    ),
    (
        "ratio-out-of-range",
        CAPL,
        lambda t, f: _capl(t, f, "--config", str(_pruning(t, ratio=1.5))),
        ["ratio", "1.5"],
    ),
    (
        "criterion-unknown-argument",
        CAPL,
        lambda t, f: _capl(
            t,
            f,
            "--config",
            str(_pruning(t, criterion={"class_path": "OCAP", "init_args": {"bogus": 1}})),
        ),
        ["bogus"],
    ),
    (
        "empty-config",
        CAPL,
        lambda t, f: _capl(t, f, "--config", str(_yaml(t, "empty.yaml", ""))),
        ["empty.yaml", "is empty"],
    ),
    (
        "config-is-a-list",
        CAPL,
        lambda t, f: _capl(t, f, "--config", str(_yaml(t, "list.yaml", "- 1\n- 2\n"))),
        ["list.yaml", "key: value"],
    ),
    (
        "missing-config",
        CAPL,
        lambda t, f: _capl(t, f, "--config", str(t / "nope.yaml")),
        ["nope.yaml", "does not exist"],
    ),
    (
        "misspelt-option",
        CAPL,
        lambda t, f: _capl(t, f, "--model.nework", "resnet20"),
        ["--model.nework", "--help"],
    ),
    (
        "top-level-optimizer",
        CAPL,
        lambda t, f: _capl(t, f, "--optimizer", "Adam", command="fit"),
        ["--optimizer"],
    ),
    (
        "epochs-not-a-number",
        CAPL,
        lambda t, f: _capl(t, f, "--trainer.max_epochs", "x", command="fit"),
        ["trainer.max_epochs", "int", "'x'"],
    ),
    (
        "batch-size-not-a-number",
        CAPL,
        lambda t, f: _capl(t, f, "--data.batch_size", "abc"),
        ["batch_size", "abc"],
    ),
    (
        "batch-size-zero",
        CAPL,
        lambda t, f: _capl(t, f, "--data.batch_size", "0"),
        ["batch_size", ">= 1"],
    ),
    (
        "unknown-class",
        CAPL,
        lambda t, f: _capl(t, f, "--data.classes", "[3, 42]"),
        ["42", "0..9"],
    ),
    (
        "trust-weights-not-a-bool",
        CAPL,
        lambda t, f: _capl(t, f, "--model.trust_weights", "maybe"),
        ["trust_weights", "maybe"],
    ),
    # capl: model.weights files
    (
        "weights-pickled-code",
        CAPL,
        lambda t, f: _capl(t, f, "--model.weights", str(f.evil)),
        ["evil.pt", "can run code", "model.trust_weights: true"],
    ),
    (
        "weights-truncated",
        CAPL,
        lambda t, f: _capl(t, f, "--model.weights", str(f.truncated)),
        ["truncated.pt", "truncated or damaged"],
    ),
    (
        "weights-garbage",
        CAPL,
        lambda t, f: _capl(t, f, "--model.weights", str(f.garbage)),
        ["garbage.pt", "truncated or damaged"],
    ),
    (
        "weights-empty-file",
        CAPL,
        lambda t, f: _capl(t, f, "--model.weights", str(f.empty)),
        ["empty.pt", "truncated or damaged"],
    ),
    (
        "weights-not-a-state-dict",
        CAPL,
        lambda t, f: _capl(t, f, "--model.weights", str(f.not_state)),
        ["list.pt", "no state_dict"],
    ),
    (
        "weights-a-folder",
        CAPL,
        lambda t, f: _capl(t, f, "--model.weights", str(f.folder)),
        ["folder.pt", "not a file"],
    ),
    (
        "weights-missing",
        CAPL,
        lambda t, f: _capl(t, f, "--model.weights", str(t / "gone.pt")),
        ["gone.pt", "does not exist"],
    ),
    (
        "weights-of-another-network",
        CAPL,
        lambda t, f: _capl(
            t, f, "--model.network", "resnet32", "--model.weights", str(f.state_dict)
        ),
        ["state.pt", "do not match"],
    ),
    # capl: --ckpt_path
    (
        "ckpt-pickled-code",
        CAPL,
        lambda t, f: _capl(t, f, "--ckpt_path", str(f.evil)),
        ["evil.pt", "can run code", "model.trust_weights: true"],
    ),
    (
        "ckpt-truncated",
        CAPL,
        lambda t, f: _capl(t, f, "--ckpt_path", str(f.truncated)),
        ["truncated.pt", "truncated or damaged"],
    ),
    (
        "ckpt-garbage",
        CAPL,
        lambda t, f: _capl(t, f, "--ckpt_path", str(f.garbage)),
        ["garbage.pt", "truncated or damaged"],
    ),
    (
        "ckpt-not-lightning",
        CAPL,
        lambda t, f: _capl(t, f, "--ckpt_path", str(f.state_dict)),
        ["state.pt", "not a Lightning checkpoint", "pytorch-lightning_version"],
    ),
    (
        "ckpt-missing",
        CAPL,
        lambda t, f: _capl(t, f, "--ckpt_path", str(t / "gone.ckpt")),
        ["gone.ckpt", "does not exist"],
    ),
    (
        "ckpt-other-network",
        CAPL,
        lambda t, f: _capl(t, f, "--model.network", "resnet18", "--ckpt_path", str(f.checkpoint)),
        ["model.network: resnet20", "model.network: resnet18"],
    ),
    (
        "ckpt-other-stem",
        CAPL,
        lambda t, f: _capl(t, f, "--model.small_input", "false", "--ckpt_path", str(f.checkpoint)),
        ["model.small_input: True", "model.small_input: False"],
    ),
    (
        "ckpt-weights-only-false",
        CAPL,
        lambda t, f: _capl(t, f, "--ckpt_path", str(f.checkpoint), "--weights_only", "false"),
        ["--weights_only false", "model.trust_weights"],
    ),
    # capl: outputs
    (
        "logger-under-a-file",
        CAPL,
        lambda t, f: _capl(t, f) + ["--trainer.logger.init_args.save_dir", str(f.a_file / "x")],
        ["trainer.logger", "is a file"],
    ),
    (
        "root-dir-under-a-file",
        CAPL,
        lambda t, f: _capl(t, f, "--trainer.default_root_dir", str(f.a_file / "x")),
        ["trainer.default_root_dir", "is a file"],
    ),
    (
        "benchmark-output-under-a-file",
        CAPL,
        lambda t, f: _capl(
            t, f, "--config", str(_pruning(t, {"output": str(f.a_file / "b.json")}))
        ),
        ["BenchmarkCallback output", "is a file"],
    ),
    (
        "benchmark-output-a-folder",
        CAPL,
        lambda t, f: _capl(t, f, "--config", str(_pruning(t, {"output": str(t)}))),
        ["BenchmarkCallback output", "is a folder"],
    ),
    (
        "pruning-fails-during-run",
        CAPL,
        lambda t, f: _capl(t, f, "--config", str(_pruning(t, ignore=["*"]))),
        ["no prunable channel group"],
    ),
    # capl-sweep
    (
        "sweep-output-under-a-file",
        SWEEP,
        lambda t, f: (
            ["--config", str(_yaml(t, "s.yaml", _sweep_dict(f)))]
            + ["--output", str(f.a_file / "out")]
        ),
        ["--output", "is a file"],
    ),
    (
        "sweep-index-out-of-range",
        SWEEP,
        lambda t, f: _sweep(t, f, lambda c: None, "--index", "5"),
        ["--index 5", "out of range", "1 points"],
    ),
    (
        "sweep-base-pickled-code",
        SWEEP,
        lambda t, f: _sweep(t, f, _set("base.checkpoint", str(f.evil))),
        ["base.checkpoint", "can run code", "base.trust_weights: true"],
    ),
    (
        "sweep-base-truncated",
        SWEEP,
        lambda t, f: _sweep(t, f, _set("base.checkpoint", str(f.truncated))),
        ["base.checkpoint", "truncated or damaged"],
    ),
    (
        "sweep-base-missing",
        SWEEP,
        lambda t, f: _sweep(t, f, _set("base.checkpoint", str(f.root / "gone.ckpt"))),
        ["base.checkpoint", "gone.ckpt", "does not exist"],
    ),
    (
        "sweep-base-wrong-head",
        SWEEP,
        lambda t, f: _sweep(t, f, _set("base.num_classes", 4)),
        ["base.checkpoint", "do not match"],
    ),
    (
        "sweep-base-trust-not-a-bool",
        SWEEP,
        lambda t, f: _sweep(t, f, _set("base.trust_weights", "yes")),
        ["base.trust_weights", "true or false"],
    ),
    (
        "sweep-batch-size-zero",
        SWEEP,
        lambda t, f: _sweep(t, f, _set("data.init_args.batch_size", 0)),
        ["batch_size", ">= 1"],
    ),
    (
        "sweep-too-few-images",
        SWEEP,
        lambda t, f: _sweep(t, f, _set("data.init_args.calibration_samples_per_class", 50)),
        ["calibration_samples_per_class=50"],
    ),
    (
        "sweep-unknown-class",
        SWEEP,
        lambda t, f: _sweep(t, f, _set("grid.classes", [[3, 5], [3, 42]])),
        ["42", "0..9"],
    ),
    (
        "sweep-data-not-a-datamodule",
        SWEEP,
        lambda t, f: _sweep(t, f, _set("data.class_path", "os.system")),
        ["data.class_path", "'os.system'", "not a ClassSubsetDataModule"],
    ),
    (
        "sweep-criterion-runs-a-command",
        SWEEP,
        lambda t, f: _sweep(
            t,
            f,
            _set(
                "grid.criteria",
                [{"class_path": "subprocess.run", "init_args": {"args": f"touch {f.marker}"}}],
            ),
        ),
        ["'subprocess.run'", "not a Criterion subclass"],
    ),
    (
        "sweep-retrain-logger",
        SWEEP,
        lambda t, f: _sweep(
            t,
            f,
            _set(
                "retrain.trainer.logger",
                {"class_path": "CSVLogger", "init_args": {"save_dir": str(f.root / "elsewhere")}},
            ),
        ),
        ["retrain.trainer.logger", "own TensorBoard logger"],
    ),
    (
        "sweep-retrain-root-dir-outside",
        SWEEP,
        lambda t, f: _sweep(t, f, _set("retrain.trainer.default_root_dir", str(f.root / "x"))),
        ["retrain.trainer.default_root_dir", "outside the sweep's output folder"],
    ),
    (
        "sweep-base-checkpoint-dirpath-outside",
        SWEEP,
        lambda t, f: _sweep(t, f, _train_base_with_checkpoints_in(f.root / "ckpts")),
        ["base.train.trainer.callbacks[0].init_args.dirpath", "outside"],
    ),
    # capl-report
    (
        "report-results-cut-mid-row",
        REPORT,
        lambda t, f: _results(t, _cut_mid_row),
        ["results.csv is damaged", "last line is incomplete", "--merge"],
    ),
    (
        "report-results-extra-cell",
        REPORT,
        lambda t, f: _results(t, _extra_cell),
        ["results.csv is damaged", "line 3 has"],
    ),
    (
        "report-results-open-quote",
        REPORT,
        lambda t, f: _results(t, _open_quote),
        ["results.csv is damaged"],
    ),
    (
        "report-folder-is-a-file",
        REPORT,
        lambda t, f: [str(f.a_file)],
        ["is a file, not a folder", "results.csv"],
    ),
    (
        "report-results-bad-status",
        REPORT,
        lambda t, f: _results(t, _bad_status),
        ["results.csv is damaged", "line 2", "status"],
    ),
    # capl-sensitivity
    (
        "sensitivity-criterion-runs-a-command",
        SENSITIVITY,
        lambda t, f: _sensitivity(
            t,
            f,
            _set(
                "criterion",
                {
                    "class_path": "subprocess.run",
                    "init_args": {"args": f"touch {f.marker}", "shell": True},
                },
            ),
        ),
        ["'subprocess.run'", "not a Criterion subclass"],
    ),
    (
        "sensitivity-data-not-a-datamodule",
        SENSITIVITY,
        lambda t, f: _sensitivity(t, f, _set("data.class_path", "os.system")),
        ["'os.system'", "not a ClassSubsetDataModule"],
    ),
    (
        "sensitivity-criterion-unknown-argument",
        SENSITIVITY,
        lambda t, f: _sensitivity(
            t, f, _set("criterion", {"class_path": "LRP", "init_args": {"composite": "auto"}})
        ),
        ["composite", "LRP", "rules"],
    ),
    (
        "sensitivity-output-under-a-file",
        SENSITIVITY,
        lambda t, f: _sensitivity(t, f, lambda c: None)[:2] + ["--output", str(f.a_file / "o")],
        ["--output", "is a file"],
    ),
    (
        "sensitivity-base-pickled-code",
        SENSITIVITY,
        lambda t, f: _sensitivity(t, f, _set("base.checkpoint", str(f.evil))),
        ["base.checkpoint", "can run code", "base.trust_weights: true"],
    ),
    (
        "sensitivity-base-garbage",
        SENSITIVITY,
        lambda t, f: _sensitivity(t, f, _set("base.checkpoint", str(f.garbage))),
        ["base.checkpoint", "truncated or damaged"],
    ),
]

ENTRY = {CAPL: main, SWEEP: sweep_main, REPORT: report_main, SENSITIVITY: sensitivity_main}


def test_the_table_is_large_and_covers_every_command() -> None:
    ids = [case[0] for case in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 30
    assert {case[1] for case in CASES} == set(ENTRY)


@pytest.mark.parametrize(
    ("command", "build", "expect"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_input_is_one_line_and_writes_nothing(
    command: str,
    build: Build,
    expect: list[str],
    files: Files,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = build(tmp_path, files)
    report_folder = tmp_path / "out" if command == REPORT else None
    before = sorted(report_folder.rglob("*")) if report_folder else []
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        ENTRY[command](args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    lines = [line for line in err.splitlines() if line.startswith(f"{command}: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for word in expect:
        assert word in lines[0], lines[0]
    assert not files.marker.exists()  # no code from a file ran
    assert not (tmp_path / "runs").exists()  # capl: no (empty) log folder
    if report_folder is not None:
        assert sorted(report_folder.rglob("*")) == before  # no report.md from damaged data
    else:
        assert not (tmp_path / "out").exists()  # sweeps and scans: nothing at all


def test_pickled_weights_do_not_run_through_the_console_script(
    files: Files, tmp_path: Path
) -> None:
    capl = Path(sys.executable).with_name("capl")
    proc = subprocess.run(
        [str(capl), *_capl(tmp_path, files, "--model.weights", str(files.evil))],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("capl: error:")]
    assert len(errors) == 1 and "can run code" in errors[0]
    assert "Traceback" not in proc.stderr and not files.marker.exists()


def test_trusted_weights_load_only_with_the_opt_in(files: Files, tmp_path: Path) -> None:
    # a checkpoint holding a Python object beyond tensors, from a source the user trusts
    torch.manual_seed(1)
    state = build_network("resnet20", 10, small_input=True).state_dict()
    path = tmp_path / "trusted.pt"
    torch.save({"state_dict": state, "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(SystemExit) as exit_info:
        main(_capl(tmp_path, files, "--model.weights", str(path), command="validate"))
    assert exit_info.value.code == 2
    cli = main(
        _capl(tmp_path, files, "--model.weights", str(path), "--model.trust_weights", "true")
        + ["--trainer.limit_test_batches", "1"]
    )
    loaded = cli.model.network.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    assert "trust_weights" not in cli.model.hparams  # never saved: each run decides for itself


def test_top_level_optimizer_options_are_gone_and_the_models_stay(
    files: Files, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    usage = capsys.readouterr().out
    assert "--optimizer" not in usage.replace("--model.optimizer", "")
    assert "--model.optimizer" in usage
    cli = main(
        _capl(tmp_path, files, command="fit")
        + ["--model.optimizer", "Adam", "--model.optimizer.lr", "0.01"]
    )
    (optimizer,) = cli.trainer.optimizers
    assert isinstance(optimizer, torch.optim.Adam) and optimizer.param_groups[0]["lr"] == 0.01


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into read-only folders")
def test_read_only_outputs_are_refused_before_work(
    files: Files, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    read_only = tmp_path / "read_only"
    read_only.mkdir()
    read_only.chmod(0o555)
    sweep = _yaml(tmp_path, "sweep.yaml", _sweep_dict(files))
    try:
        runs = [
            (main, ["test", "--config", str(files.config), *_logs(read_only)]),
            (sweep_main, ["--config", str(sweep), "--output", str(read_only / "out")]),
        ]
        for entry, args in runs:
            with pytest.raises(SystemExit) as exit_info:
                entry(args)
            err = capsys.readouterr().err
            assert exit_info.value.code == 2 and "not writable" in err, err
            assert list(read_only.iterdir()) == []
    finally:
        read_only.chmod(0o755)


def test_pruning_callback_needs_a_class_subset_datamodule() -> None:
    from types import SimpleNamespace

    from lightning.pytorch import LightningDataModule

    from capl.callbacks import PruningCallback
    from capl.criteria import L1Norm
    from capl.datamodules import DigitsSubset
    from capl.errors import ConfigError
    from capl.module import ImageClassifier
    from capl.subset_data import SubsetData

    assert isinstance(DigitsSubset(), SubsetData)
    assert not isinstance(LightningDataModule(), SubsetData)
    callback = PruningCallback(criterion=L1Norm())
    trainer = SimpleNamespace(datamodule=LightningDataModule())
    with pytest.raises(ConfigError, match="needs a capl ClassSubsetDataModule"):
        callback.setup(trainer, ImageClassifier(network="resnet20"), "test")  # type: ignore[arg-type]
