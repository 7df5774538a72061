"""Atomic file writes: results are data, and a crash must never leave half a file behind.

A write goes through ``.<name>.<pid>-<host>.<random>.tmp`` in the destination folder and is
renamed over the destination. A process killed mid-write leaves that temporary file behind;
:func:`remove_stale_temp_files` (run by the next capl run on its output folder) removes the ones
whose writer is gone. :func:`check_writable` lets a run refuse an unwritable output before it
starts working.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from capl.errors import ConfigError

log = logging.getLogger(__name__)

_TEMP = re.compile(r"^\..+\.(?P<pid>\d+)-(?P<host>.+)\.[A-Za-z0-9_]+\.tmp$")
_UNOWNED_TEMP = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")  # older capl: no pid in the name
STALE_AFTER_S = 24 * 3600.0  # a writer on another host (or of unknown pid) is surely gone by then


def _atomic(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Write through a temporary file in the same folder, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    owner = f"{os.getpid()}-{socket.gethostname()}"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{owner}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; results should read like any file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically.

    Args:
        path: Destination file; parent folders are created.
        data: The bytes to write.

    Returns:
        The destination path.
    """
    return _atomic(path, lambda handle: handle.write(data))


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    return write_text_atomic(
        path, json.dumps(obj, indent=2, sort_keys=False, default=_jsonable) + "\n"
    )


def _jsonable(value: Any) -> Any:
    """Turn tensors, numpy scalars and paths into plain JSON values."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _writer_gone(pid: int, host: str) -> bool:
    if host != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, owned by another user
        return False
    return False


def remove_stale_temp_files(folder: str | os.PathLike, recursive: bool = True) -> list[Path]:
    """Remove temporary files of atomic writes whose writer was killed.

    A file is stale when its writer (pid and host in its name) no longer runs on this host, or,
    for a writer on another host or an unnamed one, when it is older than :data:`STALE_AFTER_S`.
    Temporary files of writes still running (another array task, say) are left alone.

    Args:
        folder: The output folder; a missing folder is fine.
        recursive: Also look in subfolders.

    Returns:
        The removed files.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    now = time.time()
    for path in folder.rglob(".*.tmp") if recursive else folder.glob(".*.tmp"):
        match = _TEMP.match(path.name)
        if not (match or _UNOWNED_TEMP.match(path.name)):
            continue
        try:
            old = path.is_file() and now - path.stat().st_mtime > STALE_AFTER_S
            if old or (match and path.is_file() and _writer_gone(int(match["pid"]), match["host"])):
                path.unlink()
                removed.append(path)
        except FileNotFoundError:  # renamed or removed meanwhile by its writer
            continue
    if removed:
        log.info("removed %d temporary files of interrupted writes in %s", len(removed), folder)
    return removed


def check_writable(folder: str | os.PathLike, what: str) -> None:
    """Refuse, before any work, an output folder that cannot be created or written.

    Creates nothing that stays: the nearest existing ancestor gets a probe file, removed again.

    Args:
        folder: The folder the run will write into (it need not exist yet).
        what: How the setting is named in the message (``--output``, ``trainer.logger``).

    Raises:
        ConfigError: A path under a file, or a folder that cannot be written.
    """
    folder = Path(folder).absolute()
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(
            f"{what} {folder} cannot be created: {existing} is a file, not a folder: choose "
            "another path"
        )
    try:
        fd, probe = tempfile.mkstemp(prefix=".capl-write-test-", dir=existing)
    except OSError as err:
        raise ConfigError(
            f"{what} {folder} is not writable ({existing}: {err.strerror or err}): choose a "
            "folder you can write to"
        ) from None
    os.close(fd)
    os.unlink(probe)
