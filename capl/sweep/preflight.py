"""Checks a sweep (or sensitivity scan) makes once, before its first point runs.

A bad base checkpoint, data setting or output folder would otherwise fail every point, one after
the other, each with the same message. These checks fail the whole run at once, with one line,
before anything is written:

* :func:`prepare_output`: the output folder can be created and written; temporary files left by
  an interrupted earlier run are removed.
* :func:`check_confined`: the run's trainer settings do not direct files outside the output
  folder (a logger, ``default_root_dir``, a checkpoint ``dirpath``).
* :func:`check_base`: the base checkpoint is readable, safe to load and fits the network.
* :func:`check_data`: the DataModule can be built for every class subset of the grid and its
  data is there.

:func:`instantiate` builds the classes a sweep or sensitivity file names, and only those: capl
criteria and class-subset DataModules (a file must not be able to call ``subprocess.run``).
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from capl.errors import ConfigError
from capl.io import check_writable, remove_stale_temp_files

__all__ = [
    "check_base",
    "check_confined",
    "check_data",
    "import_class",
    "instantiate",
    "prepare_output",
]

# keys of trainer settings (at any depth) that name where files go
_PATH_KEYS = ("default_root_dir", "dirpath", "save_dir", "root_dir", "log_dir", "output")


def import_class(path: str, base: type, where: str) -> type:
    """Import ``path`` and make sure it is a subclass of ``base``.

    Raises:
        ConfigError: The path does not import, or names something else (a function, another
            class).
    """
    module, _, name = path.rpartition(".")
    try:
        found = getattr(importlib.import_module(module), name) if module else None
    except (ImportError, AttributeError, ValueError):
        found = None
    if found is None:
        raise ConfigError(f"{where}: cannot import {path!r}: give a {base.__name__} class name")
    if not (isinstance(found, type) and issubclass(found, base)):
        raise ConfigError(
            f"{where}: {path!r} is not a {base.__name__} subclass, and a config may only build "
            f"capl classes: give a {base.__name__} class name"
        )
    return found


def instantiate(spec: Mapping[str, Any], base: type, where: str) -> Any:
    """Build ``class_path(**init_args)`` after checking the class and the argument names.

    Args:
        spec: ``{"class_path": ..., "init_args": {...}}``.
        base: The class it must derive from (``Criterion``, ``ClassSubsetDataModule``).
        where: The config key, for messages.

    Raises:
        ConfigError: Not a ``base`` subclass, unknown arguments, or the class's own ConfigError.
    """
    cls = import_class(str(spec["class_path"]), base, where)
    init_args = dict(spec.get("init_args") or {})
    parameters = inspect.signature(cls).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        unknown = sorted(set(init_args) - set(parameters))
        if unknown:
            raise ConfigError(
                f"{where}.init_args: unknown {', '.join(unknown)} for {cls.__name__}: valid are "
                f"{', '.join(parameters)}"
            )
    try:
        return cls(**init_args)
    except (TypeError, ValueError) as err:
        if isinstance(err, ConfigError):
            raise ConfigError(f"{where}: {err}") from None
        raise ConfigError(f"{where}: {cls.__name__}: {err}") from None


def prepare_output(output: str | Path, what: str = "--output") -> None:
    """Refuse an output folder that cannot be written; remove stale temporary files in it.

    Raises:
        ConfigError: A path under a file, or a folder that cannot be written.
    """
    check_writable(output, what)
    remove_stale_temp_files(output)


def _path_values(node: Any, prefix: str) -> Iterable[tuple[str, str]]:
    if isinstance(node, Mapping):
        for key, value in node.items():
            where = f"{prefix}.{key}"
            if key in _PATH_KEYS and isinstance(value, (str, os.PathLike)):
                yield where, os.fspath(value)
            else:
                yield from _path_values(value, where)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _path_values(value, f"{prefix}[{i}]")


def check_confined(sections: Mapping[str, Mapping[str, Any]], output: str | Path) -> None:
    """Refuse trainer settings that would write outside the sweep's output folder.

    Args:
        sections: ``{"retrain.trainer": {...}, ...}``, the trainer settings the runs take.
        output: The sweep's ``--output`` folder.

    Raises:
        ConfigError: A logger (the sweep sets each run's own), or a path such as
            ``default_root_dir`` or a ModelCheckpoint ``dirpath`` outside ``output``.
    """
    root = Path(output).resolve()
    for section, settings in sections.items():
        logger = settings.get("logger")
        if logger not in (None, False):
            raise ConfigError(
                f"{section}.logger: the sweep gives every run its own TensorBoard logger under "
                f"{root / 'tb'}: remove {section}.logger (false turns logging off)"
            )
        for where, value in _path_values(settings, section):
            path = Path(value).expanduser()
            resolved = (path if path.is_absolute() else Path.cwd() / path).resolve()
            if not resolved.is_relative_to(root):
                raise ConfigError(
                    f"{where}: {value} is outside the sweep's output folder {root}: a sweep "
                    f"writes under --output only; remove {where} or put it inside {root}"
                )


def check_base(
    network: str,
    num_classes: int | None,
    small_input: bool,
    checkpoint: str | None,
    trusted: bool = False,
) -> None:
    """Load the configured base checkpoint once, as every point would.

    A local file is read safely (see :mod:`capl.checkpoints`) and, when ``num_classes`` is
    known, loaded into the network to check its shapes; a torchvision weights name is resolved.

    Raises:
        ConfigError: Missing, damaged or unsafe file, or one that does not fit the network.
    """
    from capl.checkpoints import load_checkpoint, state_dict_of
    from capl.models import IMAGENET_CLASSES, build_network

    if checkpoint is None:
        return
    where = "base.checkpoint"
    path = Path(checkpoint)
    local = path.exists() or os.sep in checkpoint or path.suffix in {".pt", ".pth", ".ckpt"}
    try:
        if local:
            blob = load_checkpoint(
                path, trusted=trusted, what=where, trust_setting="base.trust_weights: true"
            )
            state_dict_of(blob, path)
            if num_classes is None:
                return
        build_network(
            network, num_classes or IMAGENET_CLASSES, small_input, checkpoint, trust_weights=trusted
        )
    except ConfigError as err:
        message = str(err)
        raise ConfigError(message if message.startswith(where) else f"{where}: {message}") from None


def check_data(data: Mapping[str, Any], subsets: Iterable[Any], seed: int = 0) -> None:
    """Build the DataModule for every class subset, and set it up once on their union.

    Args:
        data: The ``data`` section (``class_path`` resolved, ``init_args``).
        subsets: The class subsets the runs use (``None``: the section's own ``classes``).
        seed: Seed for the check.

    Raises:
        ConfigError: An unknown class, a bad setting (batch size, sample counts) or missing
            data, with the DataModule's own message.
    """
    from capl.datamodules import ClassSubsetDataModule

    init_args = {**data.get("init_args", {}), "seed": seed}
    union: list[int] = []
    for classes in {json.dumps(c): c for c in subsets}.values():
        args = dict(init_args)
        if classes is not None:
            args["classes"] = classes
        spec = {"class_path": data["class_path"], "init_args": args}
        module = instantiate(spec, ClassSubsetDataModule, "data")
        union += [c for c in module.class_indices if c not in union]
    spec = {"class_path": data["class_path"], "init_args": {**init_args, "classes": union}}
    module = instantiate(spec, ClassSubsetDataModule, "data")
    try:
        module.prepare_data()
        module.setup("fit")
    except ConfigError as err:
        raise ConfigError(f"data: {err}") from None
