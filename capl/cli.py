"""The ``capl`` command: a LightningCLI over :class:`~capl.module.ImageClassifier` and the DataModules.

This is the one core module that imports ``capl.callbacks`` and ``capl.datamodules``, so YAML can
name their classes by short name (``class_path: DigitsSubset``, ``class_path: PruningCallback``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from lightning.pytorch.cli import LightningCLI

import capl.callbacks
import capl.datamodules
from capl.datamodules import ClassSubsetDataModule
from capl.errors import ConfigError
from capl.module import ImageClassifier

__all__ = ["CaplCLI", "main"]
_REGISTERED = (capl.callbacks, capl.datamodules)  # imported for their subclasses' short names


class CaplCLI(LightningCLI):
    """LightningCLI with capl's defaults: seed 0, deterministic CPU runs, any DataModule subclass."""


def main(args: Sequence[str] | None = None) -> CaplCLI | None:
    """Run ``capl fit|validate|test|predict`` (LightningCLI); user errors exit 2 with one line.

    Args:
        args: Command-line arguments; ``None`` reads ``sys.argv``.

    Returns:
        The CLI object (tests inspect its trainer and model), or ``None`` after a user error.
    """
    try:
        return CaplCLI(
            ImageClassifier,
            ClassSubsetDataModule,
            subclass_mode_data=True,
            seed_everything_default=0,
            save_config_kwargs={"overwrite": True},
            args=None if args is None else list(args),
        )
    except ConfigError as err:
        sys.stderr.write(f"capl: error: {err}\n")
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
