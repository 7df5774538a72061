"""``report.md`` of a sweep, and ``capl-report``'s regeneration of a folder's files.

Everything here works from ``results.csv`` alone (rows: :mod:`capl.sweep.rows`; statistics:
:mod:`capl.sweep.summary`; cell text: :mod:`capl.sweep.formatting`), so ``capl-report FOLDER``
can regenerate ``report.md``, ``summary.csv`` and the plots long after the runs are gone. The
report opens with the answer table (:mod:`capl.sweep.answer`), then one section per concern:
the sweep, the baseline, one table per criterion, the preparation overhead, failed points and
plots. The row and summary names are re-exported here, where earlier code imported them.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from capl.benchmark.record import (
    ACCURACY_AFTER,
    ACCURACY_BEFORE,
    ACCURACY_MACRO_AFTER,
    CRITERION_NAME,
    MACS_REMOVED,
    NONZERO_PARAMS_REMOVED,
    PARAMS_REMOVED,
    THEORETICAL_SPEEDUP,
    TIMING_PHASES,
    block_key,
    latency_key,
    measured_speedup_key,
    timing_key,
)
from capl.io import write_text_atomic
from capl.sweep.answer import render_answer
from capl.sweep.formatting import (
    BUSY_MARK,
    NA,
    cell_text,
    format_bytes,
    format_count,
    format_percent,
    format_ratio,
    format_seconds,
    format_speedup,
    mark_busy,
    markdown_table,
    stat_of,
)
from capl.sweep.rows import (
    BOOKKEEPING_COLUMNS,
    LATENCY_DIGIT,
    RESULTS_CSV,
    flatten,
    is_ok,
    natural_key,
    normalise_row,
    read_results_csv,
    result_row,
    write_results_csv,
)
from capl.sweep.summary import GROUP_COLUMNS, SUMMARY_CSV, summarise, write_results_summary

__all__ = [
    "BOOKKEEPING_COLUMNS",
    "GROUP_COLUMNS",
    "REPORT_MD",
    "RESULTS_CSV",
    "SUMMARY_CSV",
    "flatten",
    "format_bytes",
    "format_percent",
    "format_speedup",
    "is_ok",
    "normalise_row",
    "read_results_csv",
    "render_report",
    "result_row",
    "summarise",
    "write_report",
    "write_results_csv",
    "write_results_summary",
]

log = logging.getLogger(__name__)

REPORT_MD = "report.md"

_FIELD_TITLES = {
    "scope": "Scope",
    "target": "Target",
    "classes": "Classes",
    "retrain_epochs": "Retrain epochs",
}
_ENVIRONMENT = (
    ("environment.device", "device"),
    ("environment.torch", "torch"),
    ("environment.threads", "threads"),
    ("environment.onnxruntime_threads", "onnxruntime threads"),
)
_NO_BASELINE = "No unpruned run in this sweep; the 'Acc. before' column is the base model."
_NOTE = (
    "Values are mean ± sample standard deviation over seeds (no ± for a single run). "
    "Accuracies are on the selected classes (same k-way task before and after pruning); "
    "speed-ups are base latency / pruned latency (median); selection time is averaged "
    "over the runs that computed their scores (not those that reused cached scores). "
    f"{BUSY_MARK} marks a latency or speed-up timed while the machine was busy (its "
    "rounds' medians or its p90 spread too far; see benchmark.json's busy flags)."
)


@dataclass(frozen=True)
class _Sweep:
    """What every section reads: the normalised rows, their columns and summary groups."""

    rows: list[dict[str, Any]]
    columns: set[str]
    summary: list[dict[str, Any]]

    @property
    def ok(self) -> list[dict[str, Any]]:
        return [row for row in self.rows if is_ok(row)]

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [row for row in self.rows if not is_ok(row)]

    @property
    def pruned(self) -> list[dict[str, Any]]:
        return [g for g in self.summary if g["criterion"] is not None]

    @property
    def varying(self) -> list[str]:
        """Group fields other than criterion and ratio that differ between the pruned groups."""
        fields = ("scope", "target", "classes", "retrain_epochs")
        return [f for f in fields if len({g[f] for g in self.pruned}) > 1]


def _sorted_pairs(pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    return sorted(set(pairs), key=lambda p: (p[0] != "torch", p[0], natural_key(p[1])))


def _backends(columns: Iterable[str]) -> list[tuple[str, str]]:
    """``(backend, batch)`` pairs with a measured speed-up column, torch first."""
    found = (re.match(r"^realised\.measured_speedup\.([^.]+)\.([^.]+)$", n) for n in columns)
    return _sorted_pairs((m[1], m[2]) for m in found if m)


def _latency_keys(columns: Iterable[str], side: str) -> list[tuple[str, str]]:
    pattern = re.compile(rf"^{side}\.latency_ms\.([^.]+)\.([^.]+)\.median_ms$")
    # normalise_row added the bs<N> form of a bare batch key
    found = (pattern.match(n) for n in columns if not LATENCY_DIGIT.match(n))
    return _sorted_pairs((m[1], m[2]) for m in found if m)


def _timing_keys(columns: Iterable[str]) -> list[str]:
    names = {c.split(".", 1)[1] for c in columns if re.match(r"^timings_s\.[^.]+$", c)}
    return [n for n in TIMING_PHASES if n in names] + sorted(names.difference(TIMING_PHASES))


def _distinct(rows: Iterable[Mapping[str, Any]], column: str) -> list[Any]:
    values: dict[Any, None] = {}
    for row in rows:
        values.setdefault(row.get(column))
    return [v for v in values if v is not None]


def _subset(classes: Any) -> str:
    return str(classes).replace(";", ", ")


def _classes_line(sweep: _Sweep) -> list[str]:
    classes = _distinct(sweep.rows, "classes.indices")
    names = _distinct(sweep.ok, "classes.names")
    if len(classes) == 1:
        label = f" ({_subset(names[0])})" if len(names) == 1 and names[0] != classes[0] else ""
        return [f"- Classes: {_subset(classes[0])}{label}"]
    if classes:
        return ["- Class subsets: " + "; ".join(f"[{_subset(c)}]" for c in classes)]
    return []


def _sweep_section(sweep: _Sweep) -> list[str]:
    rows, pruned = sweep.rows, sweep.pruned
    models, datasets = _distinct(rows, "model"), _distinct(rows, "dataset")
    out = ["## Sweep", ""]
    out.append(
        f"- Model: {', '.join(map(str, models)) or NA}; "
        f"dataset: {', '.join(map(str, datasets)) or NA}"
    )
    out += _classes_line(sweep)
    out.append(f"- Criteria: {', '.join(map(str, _distinct(rows, CRITERION_NAME))) or NA}")
    for field in ("scope", "target", "retrain_epochs"):
        if field not in sweep.varying and pruned:
            out.append(f"- {_FIELD_TITLES[field]}: {cell_text(pruned[0][field])}")
    seeds = sorted({r.get("seed") for r in rows if r.get("seed") is not None})
    out.append(f"- Seeds: {', '.join(map(str, seeds)) or NA}")
    out.append(f"- Grid points: {len(rows)} ({len(sweep.ok)} ok, {len(sweep.failed)} failed)")
    env = sweep.ok[0] if sweep.ok else {}
    parts = [f"{label} {env[key]}" for key, label in _ENVIRONMENT if env.get(key) is not None]
    if parts:
        out.append(f"- Environment: {', '.join(parts)}")
    return [*out, "", _NOTE, ""]


def _baseline_section(sweep: _Sweep) -> list[str]:
    baseline = [g for g in sweep.summary if g["criterion"] is None and g["count"]]
    out = ["## Baseline (unpruned)", ""]
    if not baseline:
        return [*out, _NO_BASELINE, ""]
    header = ["Classes", "Runs", "Accuracy (%)", "Macro acc. (%)", "MACs", "Params", "Size"]
    latencies = _latency_keys(sweep.columns, "after")
    header += [f"Latency {b} {bs} (ms)" for b, bs in latencies]
    body = []
    for g in baseline:
        line = [
            NA if g["classes"] is None else _subset(g["classes"]),
            str(g["count"]),
            format_percent(*stat_of(g, ACCURACY_AFTER)),
            format_percent(*stat_of(g, ACCURACY_MACRO_AFTER)),
            format_count(*stat_of(g, block_key("after", "macs"))),
            format_count(*stat_of(g, block_key("after", "params"))),
            format_bytes(*stat_of(g, block_key("after", "size_bytes"))),
        ]
        line += [
            mark_busy(format_seconds(*stat_of(g, latency_key("after", b, bs))), g, b, bs)
            for b, bs in latencies
        ]
        body.append(line)
    return [*out, markdown_table(header, body), ""]


def _settings(group: Mapping[str, Any], varying: Sequence[str]) -> list[str]:
    return [cell_text(group[f]).replace(";", ", ") for f in varying]


def _criterion_line(
    g: Mapping[str, Any], varying: Sequence[str], backends: Sequence[tuple[str, str]]
) -> list[str]:
    before, _ = stat_of(g, ACCURACY_BEFORE)
    after, after_std = stat_of(g, ACCURACY_AFTER)
    delta = None if before is None or after is None else after - before
    line = [*_settings(g, varying), format_ratio(g["ratio"]), str(g["count"])]
    for name in (MACS_REMOVED, PARAMS_REMOVED, NONZERO_PARAMS_REMOVED):
        line.append(format_percent(*stat_of(g, name), digits=1))
    line.append(format_bytes(*stat_of(g, block_key("after", "size_bytes"))))
    line.append(format_speedup(*stat_of(g, THEORETICAL_SPEEDUP)))
    line += [
        mark_busy(format_speedup(*stat_of(g, measured_speedup_key(b, bs))), g, b, bs)
        for b, bs in backends
    ]
    line += [format_percent(*stat_of(g, ACCURACY_BEFORE)), format_percent(after, after_std)]
    return [*line, NA if delta is None else f"{100 * delta:+.2f}", str(g["failed"])]


def _criterion_sections(sweep: _Sweep) -> list[str]:
    varying, backends = sweep.varying, _backends(sweep.columns)
    header = [_FIELD_TITLES[f] for f in varying] + ["Ratio", "Runs", "MACs removed (%)"]
    header += ["Params removed (%)", "Non-zero params removed (%)", "Size"]
    header += ["Theoretical speed-up"] + [f"Measured {b} {bs}" for b, bs in backends]
    header += ["Acc. before (%)", "Acc. after (%)", "Δ acc. (pp)", "Failed"]
    out = []
    for criterion in _distinct(sweep.rows, CRITERION_NAME):
        groups = [g for g in sweep.pruned if g["criterion"] == criterion]
        body = [_criterion_line(g, varying, backends) for g in groups]
        out += [f"## {criterion}", "", markdown_table(header, body), ""]
    return out


def _overhead_section(sweep: _Sweep) -> list[str]:
    timings, varying = _timing_keys(sweep.columns), sweep.varying
    if not timings or not sweep.pruned:
        return []
    header = ["Criterion"] + [_FIELD_TITLES[f] for f in varying] + ["Ratio"]
    header += [name.capitalize() for name in timings]
    body = []
    for g in sweep.pruned:
        if g["count"]:
            line = [str(g["criterion"]), *_settings(g, varying), format_ratio(g["ratio"])]
            line += [format_seconds(*stat_of(g, timing_key(name))) for name in timings]
            body.append(line)
    return ["## Preparation overhead (seconds)", "", markdown_table(header, body), ""]


def _failed_section(sweep: _Sweep) -> list[str]:
    if not sweep.failed:
        return ["## Failed points", "", "None.", ""]
    body = []
    for row in sweep.failed:
        error = str(row.get("error") or "unknown error").strip().splitlines()
        message = error[-1] if error else "unknown error"
        body.append(
            [
                cell_text(row.get("point_id")),
                cell_text(row.get(CRITERION_NAME) or "baseline"),
                format_ratio(row.get("ratio")),
                cell_text(row.get("seed")),
                message[:300],
            ]
        )
    table = markdown_table(["Point", "Criterion", "Ratio", "Seed", "Error"], body)
    return ["## Failed points", "", table, ""]


def _plots_section(plots: Sequence[str]) -> list[str]:
    if not plots:
        return []
    out = ["## Plots", ""]
    for name in plots:
        out += [f"![{Path(name).stem.replace('_', ' ')}]({name})", ""]
    return out


def render_report(rows: Sequence[Mapping[str, Any]], plots: Sequence[str] = ()) -> str:
    """Render the Markdown report of a sweep.

    Args:
        rows: Rows as read by :func:`read_results_csv`.
        plots: File names of plots (relative to the report) to embed at the end.

    Returns:
        The Markdown text: the answer table, overview, baseline, one table per criterion
        (ratio, realised MACs and parameter reduction, size, theoretical and measured
        speed-ups, accuracy before and after, mean ± sample standard deviation over seeds),
        preparation overhead and failed points.
    """
    normalised = [normalise_row(row) for row in rows]
    columns: set[str] = set()
    for row in normalised:
        columns.update(row)
    sweep = _Sweep(normalised, columns, summarise(normalised))
    out = ["# capl sweep report", ""]
    out += render_answer(sweep.summary, sweep.rows)
    out += _sweep_section(sweep)
    out += _baseline_section(sweep)
    out += _criterion_sections(sweep)
    out += _overhead_section(sweep)
    out += _failed_section(sweep)
    out += _plots_section(plots)
    return "\n".join(out).rstrip() + "\n"


def _read_folder(folder: Path) -> list[dict[str, Any]]:
    """The rows of ``folder/results.csv``, with errors that say what a sweep folder holds."""
    if not folder.is_dir():
        problem = "is a file, not a folder" if folder.exists() else "does not exist"
        raise FileNotFoundError(
            f"sweep folder {str(folder)!r} {problem}; expected a capl-sweep output folder "
            f"holding {RESULTS_CSV}"
        )
    csv_path = folder / RESULTS_CSV
    if not csv_path.is_file():
        raise FileNotFoundError(
            f"{str(csv_path)!r} not found; expected the {RESULTS_CSV} that capl-sweep writes "
            "(run capl-sweep --merge first)"
        )
    rows = read_results_csv(csv_path)
    if not rows:
        raise ValueError(
            f"{str(csv_path)!r} holds no rows; expected one row per grid point (header plus rows)"
        )
    return rows


def write_report(folder: str | Path, plots: bool = True) -> list[Path]:
    """Regenerate ``report.md``, ``summary.csv`` and the plots from ``FOLDER/results.csv``.

    Args:
        folder: A sweep output folder holding ``results.csv``.
        plots: Whether to draw the PNG plots.

    Returns:
        The written files: plots first, then ``summary.csv`` and ``report.md``.

    Raises:
        FileNotFoundError: ``folder`` or its ``results.csv`` does not exist.
        ValueError: ``results.csv`` holds no rows.
    """
    folder = Path(folder)
    rows = _read_folder(folder)
    summary = summarise(rows)
    written: list[Path] = []
    if plots:
        from capl.sweep import plots as plotting  # matplotlib only when drawing

        written += plotting.plot_all(summary, folder)
    written.append(write_results_summary(summary, folder / SUMMARY_CSV))
    report = render_report(rows, plots=[p.name for p in written if p.suffix == ".png"])
    written.append(write_text_atomic(folder / REPORT_MD, report))
    log.info("wrote %d files to %s", len(written), folder)
    return written
