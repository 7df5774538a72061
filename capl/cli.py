"""The ``capl`` command: LightningCLI over the ImageClassifier and the DataModules.

This is the one core module that imports ``capl.callbacks`` and ``capl.datamodules``, so YAML can
name their classes by short name (``class_path: DigitsSubset``, ``class_path: PruningCallback``).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Sequence
from typing import Any

import torch
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from typing_extensions import override

import capl.callbacks
import capl.datamodules
from capl import preflight
from capl.console import no_top_k_reload_note, quiet_third_party, setup_logging
from capl.datamodules import ClassSubsetDataModule
from capl.errors import ConfigError, find_config_error
from capl.module import ImageClassifier
from capl.run_dir import pin_run_folder
from capl.schedules import link_cosine_to_run

__all__ = ["CaplCLI", "console_main", "main"]
_REGISTERED = (capl.callbacks, capl.datamodules)  # imported for their subclasses' short names


class CaplCLI(LightningCLI):
    """LightningCLI with capl's defaults: seed 0 and any DataModule subclass.

    Checkpoints given as ``--ckpt_path`` are read with ``weights_only=True`` (they cannot run
    code) unless ``model.trust_weights`` is true, and must hold the architecture the config
    names. Output folders are checked before the run; a failed run leaves no empty log folder.
    When the arguments start with a subcommand, only that subcommand's parser is built.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """LightningCLI's arguments; ``args`` (else ``sys.argv``) tell which parser to build."""
        self._requested = _requested_subcommand(_command_line(kwargs.get("args")))
        super().__init__(*args, **kwargs)

    def subcommands(self) -> dict[str, set[str]]:  # type: ignore[override]
        """LightningCLI's subcommands, or only the requested one.

        Lightning builds a parser for each of its four subcommands (the Trainer, model, data
        and callback signatures every time), about 0.1 s of every ``capl`` command and of every
        sweep point; a run uses one. Without a subcommand first (``capl --help``) all are built.
        """
        every = LightningCLI.subcommands()
        return {self._requested: every[self._requested]} if self._requested else every

    @override
    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        """Parse as LightningCLI does, keeping the arguments to tell given from default values.

        When ``args`` are given (capl-sweep, tests) the process's own argv is not ours:
        LightningCLI would warn about having both, so it sees none while parsing.
        """
        self._args = _command_line(args)
        saved = sys.argv
        if args is not None:
            sys.argv = sys.argv[:1]
        try:
            super().parse_arguments(parser, args)
        finally:
            sys.argv = saved

    def _explicit_model_settings(self) -> dict[str, Any]:
        if not isinstance(self._args, list):  # a dict or Namespace of settings
            return {}
        try:
            given = self.parser.parse_args(self._args, defaults=False)
        except argparse.ArgumentError:  # parsed with defaults already: nothing to compare
            return {}
        model = given.get(self.config.subcommand, {}).get("model") or {}
        return dict(model.items()) if hasattr(model, "items") else {}

    def _trust_weights(self) -> bool:
        section = self.config[self.config.subcommand] if self.config.get("subcommand") else {}
        model = section.get("model") if section else None
        return bool(model.get("trust_weights", False)) if model is not None else False

    def _parse_ckpt_path(self) -> None:
        """Adopt the checkpoint's hyperparameters, as Lightning does, after checking the file."""
        if not self.config.get("subcommand"):
            return
        path = self.config[self.config.subcommand].get("ckpt_path")
        if not preflight.is_checkpoint_file_path(path):
            return
        hparams, self._checkpoint_plan = preflight.checkpoint_hyperparameters(
            path, self._explicit_model_settings(), trusted=self._trust_weights()
        )
        if hparams:
            update = {self.config.subcommand: {"model": hparams}}
            self.config = self.parser.parse_object(update, self.config)

    def _prepare_subcommand_kwargs(self, subcommand: str) -> dict[str, Any]:
        kwargs = super()._prepare_subcommand_kwargs(subcommand)
        trusted = self._trust_weights()
        if kwargs.get("weights_only") is False and not trusted:
            raise ConfigError(
                "--weights_only false unpickles the checkpoint fully, which can run code: set "
                "model.trust_weights: true instead if you trust where the checkpoint comes from"
            )
        if "weights_only" in self._subcommand_method_arguments[subcommand]:
            kwargs["weights_only"] = not trusted
        return kwargs

    def _run_subcommand(self, subcommand: str) -> None:
        """Check the outputs first; after a failure, remove log folders left empty.

        Outside ``fit``, ModelCheckpoint's note that another folder's top-k state is not
        reloaded is hidden: nothing is trained, so nothing would use it.
        """
        preflight.check_run_outputs(self.trainer)
        created = preflight.log_dirs(self.trainer) if self.trainer.is_global_zero else {}
        quiet = no_top_k_reload_note() if subcommand != "fit" else contextlib.nullcontext()
        try:
            with quiet:
                super()._run_subcommand(subcommand)
        except BaseException:
            preflight.remove_empty_log_dirs(created)
            raise

    def before_instantiate_classes(self) -> None:
        """Stable run folders and a cosine ``T_max`` that follows ``trainer.max_epochs``."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        pin_run_folder(config, self.subcommand)
        link_cosine_to_run(config)
        if self.subcommand not in (None, "fit"):
            # a test in a fit's run folder must not replace the config the checkpoint came from
            name = f"{self.subcommand}_config.yaml"
            self.save_config_kwargs = {**self.save_config_kwargs, "config_filename": name}

    def _share_checkpoint_path(self) -> None:
        # Lightning restores --ckpt_path only after setup; pruning runs in setup and must not
        # re-select when the checkpoint already carries a plan (read once, in _parse_ckpt_path)
        plan = getattr(self, "_checkpoint_plan", None)
        if plan is None:
            return
        path = self.config_init[self.subcommand].get("ckpt_path")
        for callback in self.trainer.callbacks:
            if isinstance(callback, capl.callbacks.PruningCallback):
                callback.checkpoint_plan = (str(path), plan)

    def before_fit(self) -> None:
        """Tell the pruning callback which checkpoint ``fit`` resumes from."""
        self._share_checkpoint_path()
        shape = getattr(self.datamodule, "input_shape", None)
        if shape is not None and self.model.example_input_array is None:
            # the model summary's FLOPs (and in/out sizes) columns come from this input
            self.model.example_input_array = torch.zeros(1, *shape)

    def before_validate(self) -> None:
        """Tell the pruning callback which checkpoint ``validate`` loads."""
        self._share_checkpoint_path()

    def before_test(self) -> None:
        """Tell the pruning callback which checkpoint ``test`` loads."""
        self._share_checkpoint_path()


def _command_line(args: Any) -> Any:
    """``args`` as given (a list, or a dict of settings), else the process's own arguments."""
    return list(sys.argv[1:]) if args is None else args


def _requested_subcommand(args: Any) -> str | None:
    """The subcommand an argument list starts with (``None`` for a dict of settings)."""
    if isinstance(args, list | tuple) and args and args[0] in LightningCLI.subcommands():
        return str(args[0])
    return None


def main(args: Sequence[str] | None = None) -> CaplCLI | None:
    """Run ``capl fit|validate|test|predict`` (LightningCLI); user errors exit 2 with one line.

    Args:
        args: Command-line arguments; ``None`` reads ``sys.argv``.

    Returns:
        The CLI object (tests inspect its trainer and model), or ``None`` after a user error.
    """
    argv = None if args is None else list(args)
    quiet_third_party()
    setup_logging()
    try:
        preflight.check_config_files(_command_line(argv))
        return CaplCLI(
            ImageClassifier,
            ClassSubsetDataModule,
            subclass_mode_data=True,
            seed_everything_default=0,
            save_config_kwargs={"overwrite": True},
            # the model's own optimizer/lr_scheduler stay; top-level ones would train nothing
            auto_configure_optimizers=False,
            parser_kwargs={"exit_on_error": False},
            args=argv,
        )
    except Exception as err:
        config_error = find_config_error(err)
        if config_error is not None:
            message = str(config_error)
        elif isinstance(err, argparse.ArgumentError):
            # a misspelt subcommand has no --help of its own: the hint then names capl --help
            subcommand = _requested_subcommand(_command_line(argv))
            message = preflight.summarise_parse_error(str(err), subcommand)
        else:
            raise
        sys.stderr.write(f"capl: error: {message}\n")
        raise SystemExit(2) from None


def console_main() -> int:
    """Entry point of the ``capl`` console script: exit status 0 on success."""
    main()
    return 0


if __name__ == "__main__":
    raise SystemExit(console_main())
