"""Console entry points of the sweep tools (``capl-report``; the sweep runner adds its own)."""

from capl.sweep.report import report_main

__all__ = ["report_main"]
