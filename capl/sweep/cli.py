"""Console entry points of the sweep tools: ``capl-sweep``, ``capl-report``.

Library code logs; these entry points print one summary line (stdout) or one error line
(stderr, exit code 2 for user errors); :mod:`capl.sensitivity.cli` (``capl-sensitivity``) shares
these helpers.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from capl.errors import ConfigError
from capl.sweep.report import REPORT_MD, write_report

__all__ = [
    "exit_interrupted",
    "exit_with_error",
    "report_main",
    "sensitivity_main",
    "setup_cli_logging",
    "sweep_main",
]


def setup_cli_logging() -> None:
    """Show capl's log lines on stderr and silence known third-party noise."""
    # capl's own loggers only (not the root logger): Lightning keeps its handler, no line twice
    from capl.console import quiet_third_party, setup_logging

    quiet_third_party()
    setup_logging()


def exit_with_error(prog: str, err: BaseException) -> NoReturn:
    """Print ``PROG: error: MESSAGE`` on stderr and exit with code 2 (a user error)."""
    sys.stderr.write(f"{prog}: error: {err}\n")
    raise SystemExit(2) from None


def exit_interrupted(prog: str, interrupt: KeyboardInterrupt) -> NoReturn:
    """Ctrl-C or SIGTERM: one line instead of a traceback; exit 130 / 143 as a shell would."""
    from capl.sweep.signals import INTERRUPTED_MESSAGE, exit_code

    sys.stderr.write(f"{prog}: {INTERRUPTED_MESSAGE}\n")
    raise SystemExit(exit_code(interrupt)) from None


def _sweep_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="capl-sweep",
        description="Run a capl sweep (criteria x ratios x scopes x targets x classes x seeds x "
        "retraining), resumable; one point per process for SLURM job arrays.",
    )
    parser.add_argument("--config", required=True, type=Path, help="sweep YAML")
    parser.add_argument("--output", required=True, type=Path, help="sweep output folder")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--index",
        type=int,
        default=None,
        help="run only point N (default $SLURM_ARRAY_TASK_ID if set)",
    )
    mode.add_argument(
        "--merge",
        action="store_true",
        help="only collect point records into results.csv, report.md, plots",
    )
    mode.add_argument(
        "--base-only",
        action="store_true",
        help="only train (or find) the base model, e.g. before a job array",
    )
    parser.add_argument("--dry-run", action="store_true", help="list the points and exit")
    parser.add_argument("--force", action="store_true", help="rerun finished points too")
    parser.add_argument("--no-plots", action="store_true", help="write report.md without plots")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config entry, e.g. --set grid.seeds=[0] (YAML value; repeatable)",
    )
    return parser


def _array_index(args: argparse.Namespace) -> int | None:
    """``--index``, else ``$SLURM_ARRAY_TASK_ID`` when a plain run is asked for."""
    if args.index is not None or args.merge or args.base_only or args.dry_run:
        return args.index
    task = os.environ.get("SLURM_ARRAY_TASK_ID")
    return int(task) if task is not None and task.strip().isdigit() else None


def _summary(args: argparse.Namespace, run: Any) -> int:
    """Print the run's one summary line (and each failed point); the exit code."""
    if args.base_only:
        sys.stdout.write(f"capl-sweep: base model ready ({run.base_seconds:.1f}s)\n")
        return 0
    if args.merge:
        sys.stdout.write(
            f"capl-sweep: merged {run.rows} rows of {len(run.points)} points into {args.output}\n"
        )
        return 0
    failed = run.failed
    sys.stdout.write(
        f"capl-sweep: {len(run.ran)} points run ({len(failed)} failed), "
        f"{len(run.already_done)} already done, {len(run.skipped)} skipped; "
        f"{run.seconds:.1f}s (base {run.base_seconds:.1f}s); output {args.output}\n"
    )
    for result in failed:
        sys.stdout.write(f"  failed {result.point_id}: {result.error}\n")
    return 1 if failed else 0


def sweep_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``capl-sweep --config FILE --output DIR [--index N | --merge] [--dry-run]``.

    Without ``--index``/``--merge`` every unfinished point runs in this process, then
    ``results.csv``, ``report.md`` and plots are written. ``--index N`` (default
    ``$SLURM_ARRAY_TASK_ID`` when set) runs point N only; ``--merge`` only collects the records.

    Returns:
        0 when every point that ran succeeded, 1 when some failed.

    Raises:
        SystemExit: Code 2 after a one-line error (invalid sweep file, index out of range, ...).
    """
    args = _sweep_parser().parse_args(None if argv is None else list(argv))

    from capl.sweep.grid import expand_grid, load_sweep_config
    from capl.sweep.runner import SweepRun, describe, run_sweep

    index = _array_index(args)
    try:
        config = load_sweep_config(args.config, args.set)
        if args.dry_run:
            points, skipped = expand_grid(config)
            output = args.output if args.output.is_dir() else None
            sys.stdout.write(describe(SweepRun(points, skipped), output) + "\n")
            return 0
        setup_cli_logging()
        run = run_sweep(
            config,
            args.output,
            index=index,
            merge=args.merge,
            base_only=args.base_only,
            plots=not args.no_plots,
            force=args.force,
        )
    except ConfigError as err:
        exit_with_error("capl-sweep", err)
    except KeyboardInterrupt as interrupt:  # SIGTERM too (capl.sweep.signals)
        exit_interrupted("capl-sweep", interrupt)
    return _summary(args, run)


def sensitivity_main(argv: Sequence[str] | None = None) -> int:
    """``capl-sensitivity``: :func:`capl.sensitivity.cli.main` (its former home was here)."""
    from capl.sensitivity.cli import main

    return main(argv)


def report_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``capl-report FOLDER``: regenerate report and plots from results.csv.

    Args:
        argv: Command-line arguments; ``None`` reads ``sys.argv``.

    Returns:
        0 on success.

    Raises:
        SystemExit: With code 2 after a one-line error on stderr (missing folder, missing or
            empty ``results.csv``, bad arguments).
    """
    parser = argparse.ArgumentParser(
        prog="capl-report",
        description="Regenerate report.md, summary.csv and plots of a capl sweep from its "
        "results.csv.",
    )
    parser.add_argument("folder", type=Path, help="sweep output folder holding results.csv")
    parser.add_argument("--no-plots", action="store_true", help="write report.md only")
    args = parser.parse_args(None if argv is None else list(argv))
    from capl.io import remove_stale_temp_files

    try:
        remove_stale_temp_files(args.folder, recursive=False)
        written = write_report(args.folder, plots=not args.no_plots)
    except (FileNotFoundError, ValueError, csv.Error) as err:
        exit_with_error("capl-report", err)
    n_plots = sum(1 for p in written if p.suffix == ".png")
    sys.stdout.write(f"capl-report: wrote {REPORT_MD} and {n_plots} plots to {args.folder}\n")
    return 0
