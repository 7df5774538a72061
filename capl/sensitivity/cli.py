"""The ``capl-sensitivity`` console entry point (one summary line, or one error line)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from capl.errors import ConfigError
from capl.sweep.cli import exit_interrupted, exit_with_error, setup_cli_logging

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``capl-sensitivity --config FILE --output DIR``: per-layer pruning scan.

    Returns:
        0 on success.

    Raises:
        SystemExit: Code 2 after a one-line error on stderr.
    """
    parser = argparse.ArgumentParser(
        prog="capl-sensitivity",
        description="Prune one layer at a time at several ratios and record the accuracy; "
        "writes sensitivity.csv, sensitivity.png, suggestion.json and suggested_pruning.yaml.",
    )
    parser.add_argument("--config", required=True, type=Path, help="sensitivity YAML")
    parser.add_argument("--output", required=True, type=Path, help="output folder")
    args = parser.parse_args(None if argv is None else list(argv))

    from capl.sensitivity.config import load_sensitivity_config
    from capl.sensitivity.run import run_sensitivity

    try:
        config = load_sensitivity_config(args.config)
        setup_cli_logging()
        result = run_sensitivity(config, args.output)
    except ConfigError as err:
        exit_with_error("capl-sensitivity", err)
    except KeyboardInterrupt as interrupt:
        exit_interrupted("capl-sensitivity", interrupt)
    sys.stdout.write(
        f"capl-sensitivity: {len(result.layers)} layers x {len(config.ratios)} ratios, base "
        f"accuracy {result.base_accuracy:.4f}; wrote sensitivity.csv, sensitivity.png, "
        f"suggestion.json, suggested_pruning.yaml to {args.output}\n"
    )
    return 0
