"""Loading weights and checkpoints that a user hands capl: untrusted files never run code.

``torch.load`` with full unpickling can call any Python function named in the file (a pickled
``os.system`` runs on load). Every file is therefore read with ``weights_only=True``, which only
rebuilds tensors, containers and plain values. A file that needs more (a pickled ``nn.Module``,
custom classes) is refused with a one-line error, unless the user opts in by saying the file is
trusted (``model.trust_weights: true`` in ``capl``, ``base.trust_weights: true`` in sweep and
sensitivity files). Damaged files (truncated, garbage, a folder, not a checkpoint) are reported
the same way, as :class:`~capl.errors.ConfigError`.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from capl.errors import ConfigError

__all__ = [
    "TRUST_SETTING",
    "load_checkpoint",
    "load_lightning_checkpoint",
    "state_dict_of",
]

TRUST_SETTING = "model.trust_weights: true"
_LIGHTNING_KEYS = ("state_dict", "pytorch-lightning_version")


def load_checkpoint(
    path: str | os.PathLike,
    *,
    trusted: bool = False,
    what: str = "weights",
    trust_setting: str = TRUST_SETTING,
) -> Any:
    """Read a ``torch.save`` file without running code from it (unless ``trusted``).

    Args:
        path: The file.
        trusted: Allow full unpickling (the file's source is trusted to run code here).
        what: How the file is named in messages (``weights``, ``checkpoint``).
        trust_setting: The opt-in the message names (``base.trust_weights: true`` in sweeps).

    Returns:
        The loaded object (tensors on the CPU).

    Raises:
        ConfigError: Missing, unreadable or damaged file, or one that needs full unpickling
            while ``trusted`` is false.
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(
            f"{what} file {path} does not exist: pass an existing .pt/.pth/.ckpt path"
        )
    if not path.is_file():
        raise ConfigError(f"{what} file {path} is not a file: pass a .pt/.pth/.ckpt file")
    try:
        return torch.load(path, map_location="cpu", weights_only=not trusted)
    except pickle.UnpicklingError as err:
        if not trusted and "weights only load failed" in str(err).lower():
            resave = (
                "save it again with tensors and plain values only"
                if what == "checkpoint"
                else "re-save it as a plain state_dict (torch.save(model.state_dict(), path))"
            )
            raise ConfigError(
                f"{what} file {path} holds Python objects beyond tensors, and loading them can run "
                f"code, so it was not loaded: {resave}, or set {trust_setting} if you trust "
                "where the file comes from"
            ) from None
        raise _damaged(what, path, err) from None
    except Exception as err:  # torch raises RuntimeError, EOFError, KeyError... for bad bytes
        raise _damaged(what, path, err) from None


def _damaged(what: str, path: Path, err: BaseException) -> ConfigError:
    if isinstance(err, OSError):
        reason = err.strerror or type(err).__name__
        return ConfigError(f"cannot read {what} file {path} ({reason}): check the path")
    return ConfigError(
        f"{what} file {path} is not a readable PyTorch file (truncated or damaged: "
        f"{type(err).__name__}): copy it again or save it anew"
    )


def state_dict_of(blob: Any, path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state_dict in a loaded file: a plain state_dict or a Lightning checkpoint's.

    Lightning checkpoints' ``network.`` prefixes (capl's module) are stripped.

    Raises:
        ConfigError: The file holds no mapping of parameter names to tensors.
    """
    state = blob.get("state_dict", blob) if isinstance(blob, Mapping) else blob
    if (
        not isinstance(state, Mapping)
        or not state
        or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())
    ):
        raise ConfigError(
            f"{path} holds no state_dict (a mapping of parameter names to tensors): pass a "
            "file written by torch.save(model.state_dict(), path) or a Lightning checkpoint"
        )
    if any(key.startswith("network.") for key in state):
        state = {k[len("network.") :]: v for k, v in state.items() if k.startswith("network.")}
    return dict(state)


def load_lightning_checkpoint(
    path: str | os.PathLike, *, trusted: bool = False, trust_setting: str = TRUST_SETTING
) -> dict[str, Any]:
    """Read and check a Lightning checkpoint (what ``--ckpt_path`` and resuming take).

    Raises:
        ConfigError: The file is missing, damaged, needs full unpickling while not ``trusted``,
            or is not a Lightning checkpoint (no ``state_dict`` / ``pytorch-lightning_version``).
    """
    blob = load_checkpoint(path, trusted=trusted, what="checkpoint", trust_setting=trust_setting)
    missing = [k for k in _LIGHTNING_KEYS if not isinstance(blob, Mapping) or k not in blob]
    if missing:
        raise ConfigError(
            f"checkpoint {path} is not a Lightning checkpoint (no {', '.join(missing)}): pass a "
            ".ckpt written by capl fit, or give a plain state_dict as model.weights instead"
        )
    state_dict_of(blob, path)
    return dict(blob)
