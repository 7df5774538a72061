"""What capl's commands print: capl's own progress, without third-party noise nobody can act on.

:func:`setup_logging` shows capl's INFO lines (progress, what was pruned, where files went) on
stderr, once per process and on rank zero only, through a handler on the ``capl`` logger, so
Lightning keeps its own handler and no line is printed twice. :func:`quiet_third_party` silences,
each by its exact message, the lines a user can do nothing about:

- Lightning's advertisements for litlogger and litmodels (``💡 Tip: ...``), printed on every
  run;
- torch's ``FutureWarning`` that ``LeafSpec`` is deprecated, raised inside Lightning's own
  ``_pytree`` helper (Lightning 2.6.6, the newest release, still uses it);
- Lightning's hint to prefix the command with ``srun``, printed on any machine with SLURM's
  client installed, outside a SLURM job (inside one it still guards against a missing srun);
- while ``validate``, ``test`` or ``predict`` runs (:func:`no_top_k_reload_note`),
  ModelCheckpoint's warning that a checkpoint from another folder won't reload its top-k
  bookkeeping, which only a resumed ``fit`` uses.

(The profiler's ``USDT`` and ``gpuGetDeviceCount`` lines are quieted where capl profiles, in
:mod:`capl.benchmark.memory`.)

Everything else (user warnings, errors, Lightning's own information) is left as it is.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from typing import Any

__all__ = ["no_top_k_reload_note", "quiet_third_party", "setup_logging"]

_MARK = "_capl_console"
_TIPS = ("💡 Tip: For seamless cloud",)
_TOP_K_RELOAD = r"The dirpath has changed from .*, therefore `best_model_score`"


class _Stderr(logging.StreamHandler):
    """Write to whatever ``sys.stderr`` is when a line is logged (redirects, test capture)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


class _RankZero(logging.Filter):
    """Drop INFO and below on ranks other than zero (every DDP rank runs the same code)."""

    def filter(self, record: logging.LogRecord) -> bool:
        from lightning.fabric.utilities.rank_zero import rank_zero_only

        return record.levelno >= logging.WARNING or getattr(rank_zero_only, "rank", 0) == 0


class _NoTips(logging.Filter):
    """Drop Lightning's litlogger/litmodels advertisements."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_TIPS)


def setup_logging(level: int = logging.INFO) -> None:
    """Show capl's log lines (``capl.<module>: message``) on stderr; idempotent.

    Args:
        level: Lowest level shown for the ``capl`` loggers.
    """
    logger = logging.getLogger("capl")
    logger.setLevel(level)
    if any(getattr(h, _MARK, False) for h in logger.handlers):
        return
    handler = _Stderr()
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    handler.addFilter(_RankZero())
    setattr(handler, _MARK, True)
    logger.addHandler(handler)


def quiet_third_party() -> None:
    """Silence the third-party lines listed in the module docstring; idempotent."""
    for name in (
        "lightning.pytorch.utilities.rank_zero",
        "lightning.fabric.utilities.rank_zero",
        "pytorch_lightning.utilities.rank_zero",
    ):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoTips) for f in logger.filters):
            logger.addFilter(_NoTips())
    warnings.filterwarnings(
        "ignore",
        message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        category=FutureWarning,
    )
    if "SLURM_JOB_ID" not in os.environ:
        warnings.filterwarnings(
            "ignore", message=r"The `srun` command is available on your system but is not used"
        )


@contextlib.contextmanager
def no_top_k_reload_note() -> Iterator[None]:
    """Hide ModelCheckpoint's "won't be reloaded" warning for the duration of the block.

    Lightning restores every callback's state from ``--ckpt_path`` in ``validate``, ``test``
    and ``predict`` too, and ModelCheckpoint warns whenever the checkpoint was written in
    another folder: its top-k bookkeeping, which only a resumed ``fit`` uses, is not reloaded.
    Only this one filter is taken out afterwards; ``warnings.catch_warnings`` would also drop
    the filters that libraries imported during the block installed.
    """
    warnings.filterwarnings("ignore", message=_TOP_K_RELOAD)
    added = warnings.filters[0]
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            warnings.filters.remove(added)
