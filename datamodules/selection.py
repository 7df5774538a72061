"""Pure parts of a class-subset DataModule: option checks, class resolution, split draws.

Nothing here reads images: these functions take class names and label arrays and return
indices, so each rule (how a class is named, how validation is carved, which images calibrate)
can be read and tested on its own. Every random draw is made per class from the seed and the
class's original index, so a class keeps the same images whichever other classes are selected
with it.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from capl.errors import ConfigError

__all__ = [
    "ClassNames",
    "SplitDraw",
    "check_flag",
    "check_fraction",
    "check_int",
    "check_optional_int",
    "draw_splits",
    "is_int",
    "kept_test_positions",
    "resolve_classes",
]

# Purposes mixed into the per-class random streams, so that changing one draw (e.g. the
# calibration size) never changes another (e.g. the validation split).
_STREAM_SPLIT = 1
_STREAM_CALIBRATION = 2
_STREAM_TEST = 3
# The test cap's draw ignores ``seed``: every seed of a study is measured on the same images.
_TEST_CAP_SEED = 20_241_202


def is_int(value: Any) -> bool:
    """Whether ``value`` is an integer (Python or NumPy), not a bool."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def check_int(name: str, value: Any, minimum: int) -> int:
    """``value`` as an int, or a ConfigError naming ``name`` when it is not one >= ``minimum``."""
    if not is_int(value) or value < minimum:
        raise ConfigError(
            f"{name} must be an integer >= {minimum}, got {value!r}; "
            f"set {name} to a value >= {minimum}"
        )
    return int(value)


def check_optional_int(name: str, value: Any, minimum: int = 1) -> int | None:
    """``None``, or ``value`` checked by :func:`check_int`."""
    return None if value is None else check_int(name, value, minimum)


def check_flag(name: str, value: Any) -> bool:
    """``value`` when it is a bool, else a ConfigError naming ``name``."""
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    return value


def check_fraction(name: str, value: Any) -> float:
    """``value`` as a float in [0, 1), else a ConfigError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value < 1.0:
        raise ConfigError(f"{name} must be a number in [0, 1), got {value!r}; e.g. {name}: 0.1")
    return float(value)


@dataclass(frozen=True)
class ClassNames:
    """How a dataset's classes may be named in ``classes``.

    Attributes:
        title: The dataset's display name (in messages).
        names: Every class name, by original index.
        aliases: Other identifiers of a class (e.g. ImageNet WNIDs).
        subsets: Predefined subsets by lower-case name.
        hint: What valid classes look like (ends the unknown-class message).
    """

    title: str
    names: Sequence[str]
    aliases: Mapping[str, int]
    subsets: Mapping[str, Sequence[int | str]]
    hint: str

    def label(self, index: int) -> str:
        """``index`` with its name, for messages."""
        return f"{index} ({self.names[index]!r})"


def _class_items(classes: Sequence[int | str] | str, known: ClassNames) -> list[Any]:
    if isinstance(classes, str):
        key = classes.strip().lower()
        if key in known.subsets:
            return list(known.subsets[key])
        return [part.strip() for part in classes.split(",") if part.strip()]
    if isinstance(classes, Sequence):
        return list(classes)
    raise ConfigError(
        f"classes must be a list of class indices or names, a comma-separated string or "
        f"null, got {classes!r}"
    )


def _class_index(item: Any, known: ClassNames) -> int:
    total = len(known.names)
    if is_int(item):
        if not 0 <= int(item) < total:
            raise ConfigError(
                f"class index {int(item)} is out of range for {known.title}: use indices "
                f"0..{total - 1}"
            )
        return int(item)
    if not isinstance(item, str):
        raise ConfigError(f"class {item!r} must be an index or a name (string) of {known.title}")
    text = item.strip()
    by_name = {n: i for i, n in enumerate(known.names)}
    if text in by_name:
        return by_name[text]
    if text in known.aliases:
        return known.aliases[text]
    by_folded = {n.casefold(): i for i, n in enumerate(known.names)}
    if text.casefold() in by_folded:
        return by_folded[text.casefold()]
    if text.isdigit() and int(text) < total:
        return int(text)
    close = difflib.get_close_matches(text, list(known.names), n=3)
    suggestion = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
    raise ConfigError(
        f"unknown class {text!r} for {known.title}{suggestion}; use an index "
        f"0..{total - 1} or a class name ({known.hint})"
    )


def resolve_classes(classes: Sequence[int | str] | str | None, known: ClassNames) -> list[int]:
    """Original class indices of ``classes``, in the order given.

    Args:
        classes: Indices or names (a list, a comma-separated string, or a predefined subset's
            name); ``None`` selects every class.
        known: The dataset's class names, aliases and subsets.

    Raises:
        ConfigError: An empty selection, an unknown or out-of-range class, or a duplicate.
    """
    if classes is None:
        return list(range(len(known.names)))
    items = _class_items(classes, known)
    if not items:
        raise ConfigError(
            f"classes selects no class of {known.title}; list at least one class, or use "
            "null for all classes"
        )
    resolved: list[int] = []
    for item in items:
        index = _class_index(item, known)
        if index in resolved:
            raise ConfigError(
                f"duplicate class {known.label(index)} in classes (given as {item!r}): list "
                "each class once"
            )
        resolved.append(index)
    return resolved


@dataclass(frozen=True)
class SplitDraw:
    """What to draw from each selected class's training images.

    Attributes:
        seed: Seed of every draw (mixed with a purpose and the class's original index).
        val_fraction: Fraction held out for validation, in [0, 1).
        samples_per_class: Cap on the training images kept (None: all).
        calibration_per_class: Calibration images drawn from the kept training images.
    """

    seed: int
    val_fraction: float
    samples_per_class: int | None
    calibration_per_class: int


def _val_count(available: int, fraction: float, label: str) -> int:
    if fraction == 0.0:
        return 0
    n_val = max(1, round(fraction * available))
    if available - n_val < 1:
        raise ConfigError(
            f"class {label} has only {available} training image(s), too few to carve "
            f"val_fraction={fraction}; lower val_fraction"
        )
    return n_val


def _draw_class(
    positions: np.ndarray, original: int, draw: SplitDraw, label: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, val, calibration) positions of one class's training images."""
    positions = np.random.default_rng([draw.seed, _STREAM_SPLIT, original]).permutation(positions)
    n_val = _val_count(len(positions), draw.val_fraction, label)
    kept = positions[n_val:]
    cap = draw.samples_per_class
    if cap is not None:
        if cap > len(kept):
            raise ConfigError(
                f"samples_per_class={cap} exceeds the {len(kept)} training images of class "
                f"{label} left after carving validation; lower samples_per_class or "
                "val_fraction"
            )
        kept = kept[:cap]
    if draw.calibration_per_class > len(kept):
        raise ConfigError(
            f"calibration_samples_per_class={draw.calibration_per_class} exceeds the "
            f"{len(kept)} training images of class {label}; lower calibration_samples_per_class"
        )
    rng = np.random.default_rng([draw.seed, _STREAM_CALIBRATION, original])
    calibration = rng.choice(kept, size=draw.calibration_per_class, replace=False)
    return np.sort(kept), np.sort(positions[:n_val]), calibration


def draw_splits(
    labels: np.ndarray,
    class_indices: Sequence[int],
    draw: SplitDraw,
    label: Callable[[int], str],
    missing: Callable[[int], str],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train, validation and calibration positions in a training split of all classes.

    Train and validation positions are sorted; calibration positions are grouped by class in
    the order of ``class_indices`` (deterministic and easy to inspect).

    Args:
        labels: Original class of every training image.
        class_indices: The selected classes' original indices.
        draw: Seed, validation fraction, cap and calibration size.
        label: A class's index and name, for messages.
        missing: The message when a selected class has no training image.

    Raises:
        ConfigError: A class without images, or too few for the fraction, cap or calibration.
    """
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for original in class_indices:
        positions = np.flatnonzero(labels == original)
        if len(positions) == 0:
            raise ConfigError(missing(original))
        parts.append(_draw_class(positions, original, draw, label(original)))
    train, val, calibration = (list(column) for column in zip(*parts, strict=True))
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val)), np.concatenate(calibration)


def kept_test_positions(
    labels: np.ndarray, class_indices: Sequence[int], cap: int | None
) -> np.ndarray:
    """Sorted positions of the selected classes' test images, at most ``cap`` per class.

    The cap's draw uses a fixed seed, so every seed of a study sees the same test images.
    """
    kept = np.flatnonzero(np.isin(labels, np.asarray(class_indices, dtype=np.int64)))
    if cap is None:
        return kept
    parts = []
    for original in class_indices:
        positions = kept[labels[kept] == original]
        rng = np.random.default_rng([_TEST_CAP_SEED, _STREAM_TEST, original])
        parts.append(rng.permutation(positions)[:cap])
    return np.sort(np.concatenate(parts))
