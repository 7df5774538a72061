"""What a prune-only grid of one criterion costs: 11 ratios against 1, per-point and shared.

Runs in one process, on the digits demo setup (configs/experiments/demo.yaml: ResNet-20 at
32x32, its benchmark section: batch 1 and 32, torch and ONNX Runtime), a 1-ratio and an
11-ratio prune-only grid of L1-norm (layer scope), each in a fresh sweep folder, once per mode
and round. Each mode adds one step to the one before:

- ``per-point``: ``benchmark.latency: paired`` and ``base_cache: null``, the behaviour before
  issue 9's sharing: every point evaluates, profiles and exports the base and times it paired
  with its pruned model;
- ``shared``: the base block measured once (``OUTPUT/base_bench``) and the pruned models
  timed against the base in one interleaved group run, each model timed (as before
  2026-12-06's second session);
- ``frozen``: shared, and the heap frozen while the points run
  (:func:`capl.sweep.points.long_lived_objects_frozen`), so that each point's closing
  ``gc.collect()`` walks only what the points allocated;
- ``timed-once``: frozen, and models of one architecture timed once
  (:func:`capl.benchmark.group.architecture_key`), but each model still exported and measured
  for peak memory, and each model under test evaluated again by the benchmark;
- ``four-parsers``: also the ONNX export and peak memory measured once per architecture
  (:func:`capl.benchmark.shape_profile` in the group run) and a prune-only point's accuracy
  taken from the PruningCallback (``known_accuracy``), but each point's CLI still building
  the parsers of all four LightningCLI subcommands (as before 2026-12-06's fourth session);
- ``stages-each``: also each point's CLI building the ``test`` parser only
  (:meth:`capl.cli.CaplCLI.subcommands`), but each point recalibrating, evaluating and drawing
  its TensorBoard figures itself (as before 2026-12-07's session);
- ``defaults``: also points pruned to equal networks sharing their BatchNorm recalibration and
  evaluations (:mod:`capl.memo`) and equal figures drawn once: capl's defaults.

The modes before the defaults are made by patching the later steps out in this process
(``long_lived_objects_frozen`` by a no-op, ``capl.benchmark.group._timed_once`` by one entry
per job, ``capl.benchmark.group._shape_blocks`` measuring every job,
``PruningCallback.known_accuracy`` by ``None``, ``CaplCLI.subcommands`` by LightningCLI's
four, ``capl.memo.MEMO.get`` by ``None`` and the figure cache by the uncached drawing).
``--modes`` runs a subset.

Each figure is the wall time of ``run_sweep`` (points, group timing, results.csv and report;
no plots). The base model is trained once beforehand, as the demo sweep trains it (its epochs
unless ``--base-epochs``), and given to every sweep as ``base.checkpoint``; that training is
timed too, because a sweep command pays it once whatever the grid's size: the script reports
the grid-only ratio and the whole-command ratio (base training + grid). The order of the modes
is reversed every other round; the ratios reported are medians over rounds. Two figures are
steadier against the machine's drift: each mode's 11-ratio time over the first mode's in the
same round, and the median of a point's own run (``run_point``, its ``capl test`` without its
share of the group timing).

``--commands`` times whole ``capl-sweep`` commands instead, each a fresh process (imports,
base, points, group run, report, plots), 1 and 11 ratios, with the trained base given and
with the base trained by the command (:func:`whole_commands`).

python scripts/bench_grid.py --rounds 2 --output /tmp/grid_cost.json
python scripts/bench_grid.py --commands --rounds 3 --output /tmp/grid_commands.json
python scripts/bench_grid.py --rounds 5 --modes four-parsers defaults --cli 10 --output /tmp/g.json
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import yaml
from lightning.pytorch.cli import LightningCLI

from capl import memo
from capl.benchmark import environment_info, group, tensorboard
from capl.callbacks import PruningCallback
from capl.cli import CaplCLI
from capl.cli import main as capl_main
from capl.sweep import runner
from capl.sweep.base import base_checkpoint
from capl.sweep.grid import parse_sweep_config
from capl.sweep.runner import run_sweep

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "experiments" / "demo.yaml"


@dataclass(frozen=True)
class Mode:
    """A way of running the grid: benchmark overrides and the sharing steps switched on."""

    benchmark: dict[str, Any]
    frozen: bool = True
    by_architecture: bool = True
    shapes_once: bool = True
    accuracy_reused: bool = True
    one_parser: bool = True
    stages_shared: bool = True


EVERY_STEP = {
    "shapes_once": False,
    "accuracy_reused": False,
    "one_parser": False,
    "stages_shared": False,
}
MODES = {
    "per-point": Mode(
        {"latency": "paired", "base_cache": None},
        frozen=False,
        by_architecture=False,
        **EVERY_STEP,
    ),
    "shared": Mode({}, frozen=False, by_architecture=False, **EVERY_STEP),
    "frozen": Mode({}, by_architecture=False, **EVERY_STEP),
    "timed-once": Mode({}, **EVERY_STEP),
    "four-parsers": Mode({}, one_parser=False, stages_shared=False),
    "stages-each": Mode({}, stages_shared=False),
    "defaults": Mode({}),
}


def _every_shape(jobs: Any, indices: Any, input_shape: Any, folder: str) -> Any:
    """Shape blocks measured for every job, as each point did before; the asked ones returned."""
    blocks = SHAPE_BLOCKS(jobs, range(len(jobs)), input_shape, folder)
    return {i: blocks[i] for i in indices}


SHAPE_BLOCKS = group._shape_blocks
RUN_POINT = runner.run_point
ONE = [0.5]
ELEVEN = [round(0.1 + 0.05 * i, 2) for i in range(11)]


def demo_sweep(ratios: list[float], mode: str, base: str | None, epochs: int | None) -> Any:
    """The demo sweep cut to a prune-only grid of one criterion at ``ratios``."""
    return parse_sweep_config(demo_raw(ratios, mode, base, epochs))


def demo_raw(ratios: list[float], mode: str, base: str | None, epochs: int | None) -> Any:
    """:func:`demo_sweep` as the YAML mapping."""
    raw = yaml.safe_load(DEMO.read_text())
    raw["name"] = f"grid-cost-{mode}-{len(ratios)}"
    raw["grid"].update(
        criteria=[{"class_path": "L1Norm", "scopes": ["layer"]}],
        ratios=ratios,
        retrain_epochs=[0],
    )
    raw["benchmark"].update(MODES[mode].benchmark)
    if base is not None:
        raw["base"].pop("train")
        raw["base"]["checkpoint"] = base
    elif epochs is not None:
        raw["base"]["train"]["max_epochs"] = epochs
        raw["base"]["train"]["lr_scheduler"]["init_args"]["T_max"] = epochs
    return raw


def four_parsers() -> Any:
    """A patch making every CLI build Lightning's four subcommand parsers, as before."""
    every = LightningCLI.subcommands()
    return mock.patch.object(CaplCLI, "subcommands", lambda self: every)


def timed(config: Any, folder: Path, mode: Mode = MODES["defaults"]) -> tuple[float, list[float]]:
    """Seconds of one ``run_sweep``, with the sharing steps ``mode`` leaves out patched out.

    Returns:
        The sweep's seconds and each point's own run (``run_point``: its ``capl test``, without
        its share of the group timing run), which the group run's noise does not reach.
    """
    points: list[float] = []

    def run_point(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return RUN_POINT(*args, **kwargs)
        finally:
            points.append(time.perf_counter() - start)

    # a sweep command is a fresh process: nothing from the sweeps timed before it
    memo.MEMO.clear()
    tensorboard._rendered.cache_clear()
    with contextlib.ExitStack() as patches:
        patches.enter_context(mock.patch.object(runner, "run_point", run_point))
        if not mode.frozen:
            patches.enter_context(
                mock.patch.object(runner, "long_lived_objects_frozen", contextlib.nullcontext)
            )
        if not mode.by_architecture:
            every_job = mock.patch.object(group, "_timed_once", lambda jobs: list(range(len(jobs))))
            patches.enter_context(every_job)
        if not mode.shapes_once:
            patches.enter_context(mock.patch.object(group, "_shape_blocks", _every_shape))
        if not mode.accuracy_reused:
            unknown = mock.patch.object(PruningCallback, "known_accuracy", lambda *a, **k: None)
            patches.enter_context(unknown)
        if not mode.one_parser:
            patches.enter_context(four_parsers())
        if not mode.stages_shared:
            patches.enter_context(mock.patch.object(memo.MEMO, "get", lambda key: None))
            uncached = tensorboard._rendered.__wrapped__
            patches.enter_context(mock.patch.object(tensorboard, "_rendered", uncached))
        start = time.perf_counter()
        run = run_sweep(config, folder, plots=False)
        seconds = time.perf_counter() - start
    failed = [r.point_id for r in run.failed]
    if failed:
        raise SystemExit(f"points failed in {folder}: {failed}")
    return seconds, points


def summarise(seconds: dict[str, dict[int, list[float]]], base_s: float) -> dict[str, Any]:
    """Print and return the medians: grid-only 11/1 and whole-command (base + grid) 11/1."""
    rounds = len(next(iter(seconds.values()))[1])
    print(f"\nmedians over {rounds} rounds; base training {base_s:.1f} s")
    print(
        f"{'mode':9s}  {'1 ratio s':>10s}  {'11 ratios s':>11s}  {'grid 11/1':>9s}  "
        f"{'command 11/1':>12s}"
    )
    summary = {}
    for mode, by_n in seconds.items():
        grid = [b / a for a, b in zip(by_n[1], by_n[11])]
        command = [(base_s + b) / (base_s + a) for a, b in zip(by_n[1], by_n[11])]
        summary[mode] = {
            "seconds_1": by_n[1],
            "seconds_11": by_n[11],
            "ratio": grid,
            "command_ratio": command,
        }
        one, eleven = statistics.median(by_n[1]), statistics.median(by_n[11])
        print(
            f"{mode:9s}  {one:10.1f}  {eleven:11.1f}  {statistics.median(grid):9.2f}  "
            f"{statistics.median(command):12.2f}"
        )
    first = next(iter(seconds))
    for mode, by_n in list(seconds.items())[1:]:
        # same-round ratios: the machine's drift between rounds cancels out
        paired = [b / a for a, b in zip(seconds[first][11], by_n[11])]
        summary[mode]["paired_11_vs_" + first] = paired
        print(f"{mode} / {first}, 11 ratios, same round: {statistics.median(paired):.3f} (median)")
    return summary


def whole_commands(work: Path, base: str, rounds: int) -> dict[str, Any]:
    """Wall time of whole ``capl-sweep`` commands, 1 and 11 ratios, each a fresh process.

    What a user waits for: interpreter start-up and imports, the base (trained by the command,
    or the trained ``base`` checkpoint given), the points, the group run, report and plots.
    Alternating order, ``rounds`` rounds; ratios are medians of per-round ratios.
    """
    seconds: dict[str, dict[int, list[float]]] = {"checkpoint": {1: [], 11: []}}
    seconds["train"] = {1: [], 11: []}
    for r in range(rounds):
        runs = [(kind, ratios) for kind in seconds for ratios in (ONE, ELEVEN)]
        for kind, ratios in runs if r % 2 == 0 else list(reversed(runs)):
            raw = demo_raw(ratios, "defaults", base if kind == "checkpoint" else None, None)
            folder = work / f"command-{r}-{kind}-{len(ratios)}"
            config = folder.with_suffix(".yaml")
            config.write_text(yaml.safe_dump(raw))
            start = time.perf_counter()
            command = [sys.executable, "-c", "from capl.sweep.cli import sweep_main; sweep_main()"]
            command += ["--config", str(config), "--output", str(folder)]
            subprocess.run(command, check=True, capture_output=True)
            spent = time.perf_counter() - start
            seconds[kind][len(ratios)].append(spent)
            print(f"round {r}: capl-sweep, base {kind:10s} {len(ratios):2d} ratios {spent:6.1f} s")
    summary = {}
    for kind, by_n in seconds.items():
        ratio = statistics.median(b / a for a, b in zip(by_n[1], by_n[11]))
        summary[kind] = {"seconds_1": by_n[1], "seconds_11": by_n[11], "ratio": ratio}
        one, eleven = statistics.median(by_n[1]), statistics.median(by_n[11])
        print(f"capl-sweep, base {kind}: {one:.1f} s / {eleven:.1f} s, 11/1 {ratio:.2f}")
    return summary


def cli_parse(point_config: Path, rounds: int) -> dict[str, Any]:
    """Seconds of a point's ``capl test --config ... --print_config``: four parsers against one.

    ``--print_config`` builds the parsers and parses the point's config, then exits before
    anything is instantiated: the part of a point's CLI run that the one-parser step changes.
    """
    argv = ["test", "--config", str(point_config), "--print_config"]
    seconds: dict[str, list[float]] = {"four-parsers": [], "defaults": []}
    for r in range(rounds + 1):  # the first round warms caches and is not kept
        for mode in seconds if r % 2 == 0 else list(reversed(seconds)):
            with contextlib.ExitStack() as patches:
                if mode == "four-parsers":
                    patches.enter_context(four_parsers())
                patches.enter_context(contextlib.redirect_stdout(io.StringIO()))
                start = time.perf_counter()
                with contextlib.suppress(SystemExit):
                    capl_main(argv)
                if r:
                    seconds[mode].append(time.perf_counter() - start)
    medians = {mode: statistics.median(times) for mode, times in seconds.items()}
    for mode, median in medians.items():
        print(f"capl test --print_config of a point, {mode}: {median:.3f} s (median)")
    return {"seconds": seconds, "medians": medians}


def in_process_rounds(
    modes: list[str], rounds: int, work: Path, base: str
) -> tuple[dict[str, dict[int, list[float]]], dict[str, list[float]]]:
    """Time the 1- and 11-ratio grids of each mode, the modes' order reversed every round.

    Returns:
        Each mode's sweep seconds by grid size, and each round's median point run of its
        11-ratio grid.
    """
    seconds: dict[str, dict[int, list[float]]] = {m: {1: [], 11: []} for m in modes}
    point_medians: dict[str, list[float]] = {m: [] for m in modes}
    for r in range(rounds):
        order = modes if r % 2 == 0 else list(reversed(modes))
        for mode in order:
            for ratios in (ONE, ELEVEN):
                folder = work / f"r{r}-{mode}-{len(ratios)}"
                spent, points = timed(demo_sweep(ratios, mode, base, 0), folder, MODES[mode])
                seconds[mode][len(ratios)].append(spent)
                print(f"round {r}: {mode:9s} {len(ratios):2d} ratios {spent:7.1f} s", flush=True)
                if ratios is ELEVEN:
                    point_medians[mode].append(statistics.median(points))
    return seconds, point_medians


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--base-epochs", type=int, default=None, help="default: the demo's")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary folder")
    parser.add_argument("--output", type=Path, default=None, help="JSON with every figure")
    parser.add_argument("--no-warmup", action="store_true", help="skip the untimed first grid")
    parser.add_argument(
        "--modes", nargs="+", choices=list(MODES), default=list(MODES), help="default: all"
    )
    parser.add_argument(
        "--commands", action="store_true",
        help="time whole capl-sweep commands (fresh processes) instead of in-process modes",
    )  # fmt: skip
    parser.add_argument(
        "--cli", type=int, metavar="ROUNDS", default=0,
        help="after the grids, time a point's CLI parse with four parsers and with one",
    )  # fmt: skip
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="capl-grid-cost-"))
    if args.workdir and work.exists() and any(work.iterdir()):
        # sweeps resume: an earlier run's finished points would be timed as free
        parser.error(f"--workdir {work} is not empty: give a new or empty folder")
    start = time.perf_counter()
    base = base_checkpoint(demo_sweep(ONE, "shared", None, args.base_epochs), work / "base")
    base_s = time.perf_counter() - start
    print(f"base training (paid once per sweep command): {base_s:.1f} s", flush=True)
    if args.commands:
        summary = whole_commands(work, base, args.rounds)
        if args.output:
            env = environment_info(ort_threads=None)
            record = {"commands": summary, "environment": env}
            args.output.write_text(json.dumps(record, indent=2))
        return 0
    if not args.no_warmup:  # imports, first exports and allocator growth are not the grid's
        timed(demo_sweep(ONE, "shared", base, 0), work / "warmup")
    modes = [m for m in MODES if m in args.modes]
    seconds, point_medians = in_process_rounds(modes, args.rounds, work, base)
    summary = summarise(seconds, base_s)
    for mode, medians in point_medians.items():
        summary[mode]["point_s_11"] = medians
        print(f"{mode}: a point's own run {statistics.median(medians):.3f} s (median of rounds)")
    parse = None
    if args.cli:
        config = next((work / f"r0-{modes[0]}-1" / "points").glob("*/config.yaml"))
        parse = cli_parse(config, args.cli)
    if args.output:
        env = environment_info(ort_threads=None)
        record = {"base_training_s": base_s, "seconds": summary, "environment": env}
        record |= {"cli_parse": parse} if parse else {}
        args.output.write_text(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
