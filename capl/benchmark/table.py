"""The console table of a benchmark: two model blocks side by side, with their ratio."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["format_table"]

Row = tuple[str, float | None, float | None, str]

_COUNTS = (
    ("macs", "MACs (ptflops)", ""),
    ("conv_linear_macs", "MACs (conv+linear)", ""),
    ("params", "params", ""),
    ("nonzero_params", "non-zero params", ""),
    ("size_bytes", "size", "B"),
    ("sparse_size_bytes", "sparse size", "B"),
)


def _human(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    for factor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= factor:
            return f"{value / factor:.3f}{suffix}{unit}"
    return f"{value:.0f}{unit}" if float(value).is_integer() else f"{value:.3f}{unit}"


def _rows(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[Row]:
    """``(label, before, after, unit)`` per metric; ``%`` marks accuracies (fractions)."""
    rows: list[Row] = []
    for key, label in (("accuracy", "accuracy"), ("accuracy_macro", "accuracy (macro)")):
        if before.get(key) is not None or after.get(key) is not None:
            rows.append((label, before.get(key), after.get(key), "%"))
    rows += [(label, before.get(k), after.get(k), unit) for k, label, unit in _COUNTS]
    for backend, per_batch in (before.get("latency_ms") or {}).items():
        for batch, lat in per_batch.items():
            other = (after.get("latency_ms") or {}).get(backend, {}).get(batch, {})
            for stat in ("median_ms", "p90_ms"):
                label = f"{backend} {batch} {stat.split('_')[0]} ms"
                rows.append((label, lat.get(stat), other.get(stat), "ms"))
    for batch, mem in (before.get("peak_memory") or {}).items():
        other = (after.get("peak_memory") or {}).get(batch, {})
        rows.append((f"peak memory {batch}", mem.get("peak_bytes"), other.get("peak_bytes"), "B"))
    return rows


def _cell(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "%":
        return f"{100 * value:.2f} %"
    return f"{value:.3f}" if unit == "ms" else _human(value, unit)


def _change(before: float | None, after: float | None, unit: str) -> str:
    if after is None or before is None:
        return "-"
    if unit == "%":
        return f"{100 * (after - before):+.2f} pp"
    return "-" if before == 0 else f"{after / before:.3f}"


def _aligned(lines: list[tuple[str, str, str, str]]) -> str:
    """The label column left-aligned, the numbers right-aligned, a rule under the header."""
    widths = [max(len(line[i]) for line in lines) for i in range(4)]
    out = []
    for index, line in enumerate(lines):
        cells = [text.ljust(widths[i]) if i == 0 else text.rjust(widths[i]) for i, text in
                 enumerate(line)]  # fmt: skip
        out.append("  ".join(cells).rstrip())
        if index == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def format_table(before: Mapping[str, Any], after: Mapping[str, Any]) -> str:
    """A plain-text summary of two :func:`capl.benchmark.profile_model` blocks.

    Args:
        before: Block of the base model.
        after: Block of the pruned model; both may hold ``accuracy``/``accuracy_macro``
            (fractions, as the BenchmarkCallback's blocks do).

    Returns:
        Aligned columns ``metric | before | after | after/before``, one line per metric; for
        accuracies the last column is the change in percentage points.
    """
    lines = [("metric", "before", "after", "after/before")]
    for label, b, a, unit in _rows(before, after):
        lines.append((label, _cell(b, unit), _cell(a, unit), _change(b, a, unit)))
    return _aligned(lines)
