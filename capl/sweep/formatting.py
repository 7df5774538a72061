"""Text of the sweep report's cells: percentages, bytes, counts, speed-ups and Markdown tables.

Every formatter takes a mean and an optional standard deviation (``93.21 ± 1.23``) and shows
:data:`NA` for a missing value.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = [
    "BUSY_MARK",
    "NA",
    "cell_text",
    "format_bytes",
    "format_count",
    "format_percent",
    "format_ratio",
    "format_seconds",
    "format_speedup",
    "mark_busy",
    "markdown_table",
    "stat_of",
]

NA = "-"  # shown for a missing value
BUSY_MARK = "†"  # a latency timed while the machine was busy


def _mean_std(
    value: float | None, std: float | None, fmt: Callable[[float], str], mark: str = ""
) -> str:
    """``fmt(value) + mark``, then `` ± fmt(std)`` when ``std`` is given; ``-`` for no value."""
    if value is None:
        return NA
    return fmt(value) + mark + ("" if std is None else f" ± {fmt(std)}")


def format_percent(value: float | None, std: float | None = None, digits: int = 2) -> str:
    """Format a fraction as a percentage number (``0.9321 -> "93.21"``), with ``± std``."""
    return _mean_std(value, std, lambda v: f"{100 * v:.{digits}f}")


def format_bytes(value: float | None, std: float | None = None) -> str:
    """Format a byte count in B, KiB or MiB (``1536 -> "1.50 KiB"``), with ``± std``."""
    if value is None:
        return NA
    unit, scale = next(
        ((u, s) for u, s in (("MiB", 1024**2), ("KiB", 1024)) if abs(value) >= s), ("B", 1)
    )
    digits = 0 if unit == "B" else 2
    return f"{_mean_std(value, std, lambda v: f'{v / scale:.{digits}f}')} {unit}"


def format_speedup(value: float | None, std: float | None = None) -> str:
    """Format a speed-up factor as ``"1.83x"``, with ``± std``."""
    return _mean_std(value, std, lambda v: f"{v:.2f}", mark="x")


def format_count(value: float | None, std: float | None = None) -> str:
    """Format large counts (MACs, parameters) with an SI suffix (``1.81e9 -> "1.81G"``)."""
    if value is None:
        return NA
    suffix, scale = next(
        ((u, s) for u, s in (("G", 1e9), ("M", 1e6), ("k", 1e3)) if abs(value) >= s), ("", 1.0)
    )
    text = f"{value / scale:.2f}{suffix}" if suffix else f"{value:.0f}"
    if std is not None:
        text += f" ± {std / scale:.2f}{suffix}"
    return text


def format_seconds(value: float | None, std: float | None = None) -> str:
    """Format seconds with two decimals, with ``± std``."""
    return _mean_std(value, std, lambda v: f"{v:.2f}")


def format_ratio(value: Any) -> str:
    """A nominal pruning ratio as written (``0.5``), ``-`` when unknown."""
    if isinstance(value, int | float):
        return f"{value:g}"
    return NA if value is None else str(value)


def cell_text(value: Any) -> str:
    """A value as one Markdown table cell (pipes escaped, one line)."""
    text = NA if value is None or value == "" else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    """A Markdown table of a header and rows of cells."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell_text(cell) for cell in line) + " |" for line in body]
    return "\n".join(lines)


def stat_of(group: Mapping[str, Any], name: str) -> tuple[float | None, float | None]:
    """A summary group's ``(mean, std)`` of a metric column, ``(None, None)`` when absent."""
    stat = group["metrics"].get(name)
    return (None, None) if stat is None else (stat["mean"], stat["std"])


def mark_busy(text: str, group: Mapping[str, Any], backend: str, batch: str) -> str:
    """``text`` with :data:`BUSY_MARK` when the group's ``(backend, batch)`` cell was busy."""
    return text + BUSY_MARK if (backend, batch) in group.get("busy", ()) else text
