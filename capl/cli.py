"""The ``capl`` command: LightningCLI over the ImageClassifier and the DataModules.

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
from capl.errors import find_config_error
from capl.module import ImageClassifier
from capl.run_dir import pin_run_folder

__all__ = ["CaplCLI", "console_main", "main"]
_REGISTERED = (capl.callbacks, capl.datamodules)  # imported for their subclasses' short names


class CaplCLI(LightningCLI):
    """LightningCLI with capl's defaults: seed 0 and any DataModule subclass."""

    def before_instantiate_classes(self) -> None:
        """Stable run folders: SLURM job versions, requeue checkpoints in the run folder."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        pin_run_folder(config, self.subcommand)


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
    except Exception as err:
        config_error = find_config_error(err)
        if config_error is None:
            raise
        sys.stderr.write(f"capl: error: {config_error}\n")
        raise SystemExit(2) from None


def console_main() -> int:
    """Entry point of the ``capl`` console script: exit status 0 on success."""
    main()
    return 0


if __name__ == "__main__":
    raise SystemExit(console_main())
