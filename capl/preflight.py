"""What ``capl`` checks before a run starts working, and what it tidies after a failed one.

* :func:`check_config_files` and :func:`summarise_parse_error` turn what jsonargparse reports as
  ~30 lines of usage into one line naming the key, the problem and the fix (for an unknown
  criterion: the valid ones).
* :func:`checkpoint_hyperparameters` reads a ``--ckpt_path`` checkpoint safely (no code runs,
  see :mod:`capl.checkpoints`) before Lightning does, and refuses a checkpoint whose architecture
  differs from what the config asks for (Lightning would silently adopt the checkpoint's).
* :func:`check_run_outputs` refuses unwritable log, checkpoint and root folders before the run.
* :func:`remove_empty_log_dirs` removes the log folders a failed run created without logging
  anything into them (an empty TensorBoard ``version_N``).
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from capl.checkpoints import load_lightning_checkpoint
from capl.errors import ConfigError
from capl.io import check_writable, remove_stale_temp_files

__all__ = [
    "ARCHITECTURE_KEYS",
    "check_config_files",
    "check_run_outputs",
    "checkpoint_hyperparameters",
    "log_dirs",
    "remove_empty_log_dirs",
    "summarise_parse_error",
]

log = logging.getLogger(__name__)

# settings that fix a checkpoint's architecture; the head (num_classes, head_classes) may differ,
# because pruning cuts it to the selected classes
ARCHITECTURE_KEYS = ("network", "small_input")
# Lightning's symbolic --ckpt_path values, resolved by the trainer itself
_SYMBOLIC_CKPT = ("best", "last", "hpc", "registry")
# files a run writes into its log folder before it has logged anything
_NO_RESULT_FILES = ("config.yaml", "hparams.yaml")


# --------------------------------------------------------------------------------------------
# Parsing


def check_config_files(args: Sequence[str]) -> None:
    """Refuse an empty (or non-mapping) ``--config`` file with a one-line message.

    jsonargparse reports an empty file as ``Unexpected config:`` without naming it.

    Raises:
        ConfigError: A ``--config``/``-c`` file that holds no ``key: value`` settings.
    """
    for index, arg in enumerate(args):
        if arg in ("--config", "-c") and index + 1 < len(args):
            path = Path(args[index + 1])
        elif arg.startswith("--config="):
            path = Path(arg.split("=", 1)[1])
        else:
            continue
        if not path.is_file():
            continue  # jsonargparse names a missing file itself
        try:
            content = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ConfigError(f"config file {path} is not valid YAML: {first}") from None
        if content is None:
            raise ConfigError(
                f"config file {path} is empty: give it settings (model:, data:, trainer:) or "
                "leave out --config"
            )
        if not isinstance(content, Mapping):
            raise ConfigError(
                f"config file {path} must hold key: value settings, got a "
                f"{type(content).__name__}: see configs/default.yaml"
            )


_KEY = re.compile(r'^Parser key "([^"]+)":\s*(.*)$')
_CLASS = re.compile(r"^Problem with given class_path '([^']+)':\s*(.*)$")
_TYPE = re.compile(r"<class '(?:[\w.]+\.)?(\w+)'>")
_IMPORT = re.compile(r"(?:dot import path string: |Import path )(\S+)")
_SKIP = ("Does not validate against any of the Union subtypes", "Errors:")


def summarise_parse_error(message: str, subcommand: str | None = None) -> str:
    """One line from a jsonargparse error: the key path, the innermost problem and a fix.

    Args:
        message: The parser's (multi-line) message.
        subcommand: ``fit``/``test``/...; named in the hint.

    Returns:
        E.g. ``trainer.callbacks: PruningCallback ratio: expected a float, got 'half': ...``.
    """
    lines = [line.strip().lstrip("-").strip() for line in message.strip().splitlines()]
    keys: list[str] = []
    classes: list[str] = []
    detail = ""
    for line in lines:
        if not line or line in _SKIP or line.startswith("Subtypes:"):
            continue
        match = _KEY.match(line) or _CLASS.match(line)
        if match is None:
            detail = line
            break
        if match.re is _KEY:
            keys.append(match[1])
        else:
            classes.append(match[1].rsplit(".", 1)[-1])
        if match[2]:
            detail = match[2]
            break
    detail = _TYPE.sub(r"\1", detail).rstrip(".").replace("Expected a ", "expected ")
    given = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("Given value:")), "")
    if detail.startswith("expected") and "Got value" not in detail and given and not classes:
        detail = f"{detail}, got {given!r}"
    detail = detail.replace(". Got value: ", ", got ")
    hint = f"capl {subcommand} --help" if subcommand else "capl --help"
    if not keys:
        return f"{detail or 'invalid arguments'}: see {hint} for the accepted options"
    if detail.startswith("the following arguments are required"):
        return f"{detail}: give them in a --config file or on the command line"
    where = keys[0]
    if classes:
        inner = ".".join(keys[1:])
        where = f"{where}: {classes[0]} {inner}".rstrip()
        if len(classes) > 1:
            where = f"{where} ({classes[1]})"
    if keys[-1] == "criterion" and len(classes) == 1:  # the criterion class itself is wrong
        name = _IMPORT.search(detail)
        problem = f"unknown criterion {name[1]!r}" if name else detail
        return f"{where}: {problem}: {_criteria_hint()}"
    return f"{where}: {detail}: fix the value ({hint} lists the options)"


def _criteria_hint() -> str:
    from capl.criteria import available_criteria

    return f"valid criteria are {', '.join(sorted(available_criteria()))} (class_path: NAME)"


# --------------------------------------------------------------------------------------------
# --ckpt_path


def is_checkpoint_file_path(path: Any) -> bool:
    """Whether ``--ckpt_path`` names a local file (not ``best``/``last``/``hpc``/a URL)."""
    if not path:
        return False
    text = str(path)
    return not (text in _SYMBOLIC_CKPT or text.startswith("registry:") or "://" in text)


def checkpoint_hyperparameters(
    path: str | Path, explicit: Mapping[str, Any], trusted: bool = False
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """A ``--ckpt_path`` checkpoint's model settings, read safely and checked against the config.

    Args:
        path: The checkpoint.
        explicit: The model settings the user gave (config files and command line, defaults
            left out).
        trusted: Allow full unpickling (``model.trust_weights``).

    Returns:
        The checkpoint's ``hyper_parameters`` for the config, without settings a file must not
        choose for the user (``trust_weights``); and the pruning plan it carries (or ``None``),
        so that pruning need not read the file again.

    Raises:
        ConfigError: A missing or damaged checkpoint, one that needs full unpickling while not
            trusted, not a Lightning checkpoint, or an architecture other than the config's.
    """
    checkpoint = load_lightning_checkpoint(path, trusted=trusted)
    hparams = dict(checkpoint.get("hyper_parameters") or {})
    hparams.pop("_instantiator", None)
    hparams.pop("trust_weights", None)
    saved = dict(checkpoint.get("capl") or {})
    for key in ARCHITECTURE_KEYS:
        theirs = hparams.get(key, saved.get(key))
        if key in explicit and theirs is not None and explicit[key] != theirs:
            raise ConfigError(
                f"checkpoint {path} holds model.{key}: {theirs} but the config sets "
                f"model.{key}: {explicit[key]}: set model.{key}: {theirs} to match it, or pass "
                f"a checkpoint made with model.{key}: {explicit[key]}"
            )
    return hparams, saved.get("pruning_plan")


# --------------------------------------------------------------------------------------------
# Outputs


def _output_folders(trainer: Any) -> list[tuple[str, Path]]:
    folders = [("trainer.default_root_dir", Path(trainer.default_root_dir))]
    for logger in trainer.loggers:
        root = getattr(logger, "root_dir", None) or getattr(logger, "save_dir", None)
        if root:
            folders.append((f"trainer.logger ({type(logger).__name__})", Path(root)))
    for callback in trainer.callbacks:
        dirpath = getattr(callback, "dirpath", None)
        if dirpath:
            folders.append((f"{type(callback).__name__} dirpath", Path(dirpath)))
    return folders


def check_run_outputs(trainer: Any) -> None:
    """Refuse unwritable output folders of a run before it starts; drop stale temp files.

    Raises:
        ConfigError: A log, checkpoint or root folder under a file or not writable.
    """
    for what, folder in _output_folders(trainer):
        check_writable(folder, what)
    for logger in trainer.loggers:
        root = getattr(logger, "root_dir", None)
        if root:
            remove_stale_temp_files(root)


def log_dirs(trainer: Any) -> dict[Path, list[Path]]:
    """The loggers' run folders, each with the folders a run would create for it (call before).

    Returns:
        ``{log dir: [log dir, parent, ...]}`` up to the first folder that exists already; an
        empty list when the log dir exists.
    """
    out: dict[Path, list[Path]] = {}
    for logger in trainer.loggers:
        folder = getattr(logger, "log_dir", None)
        if not folder:
            continue
        new: list[Path] = []
        current = Path(folder).absolute()
        while not current.exists() and current != current.parent:
            new.append(current)
            current = current.parent
        out[Path(folder)] = new
    return out


def _holds_results(folder: Path) -> bool:
    for path in folder.rglob("*"):
        if path.is_dir() or path.name in _NO_RESULT_FILES:
            continue
        if not path.name.startswith("events.out.tfevents.") or _has_summaries(path):
            return True
    return False


def _has_summaries(path: Path) -> bool:
    """Whether a TensorBoard event file holds any summary beyond the hparams description."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    try:
        for event in EventFileLoader(str(path)).Load():
            if any(not v.tag.startswith("_hparams_/") for v in event.summary.value):
                return True
    except Exception:  # unreadable: keep it, it may hold something
        return True
    return False


def remove_empty_log_dirs(before: Mapping[Path, Sequence[Path]]) -> list[Path]:
    """Remove log folders a failed run created but logged nothing into.

    Args:
        before: :func:`log_dirs` taken before the run.

    Returns:
        The removed folders.
    """
    removed = []
    for folder, created in before.items():
        if not created or not folder.is_dir() or _holds_results(folder):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
        for parent in created[1:]:  # name folders this run made, when nothing else is in them
            if parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()
    if removed:
        log.info("removed empty log folders of the failed run: %s", ", ".join(map(str, removed)))
    return removed
