"""Sweeps over criteria x ratios x scopes x class subsets x seeds, and their reports.

``capl.sweep.report`` turns each grid point's ``benchmark.json`` into a row of ``results.csv``
and renders ``report.md``; ``capl.sweep.plots`` draws the figures (imported on demand, so that
importing the package does not pull in matplotlib).
"""

from capl.sweep.report import (
    flatten,
    read_results_csv,
    render_report,
    result_row,
    summarise,
    write_report,
    write_results_csv,
)

__all__ = [
    "flatten",
    "read_results_csv",
    "render_report",
    "result_row",
    "summarise",
    "write_report",
    "write_results_csv",
]
