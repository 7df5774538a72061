"""Planning and replay run their batch-1 passes on one CPU thread.

The planner's own work (tracing a dependency graph, copying a network, counting weights) is
made of single-sample forwards and many small ops. Intra-op threads gain little on it when the
cores are free and cost an order of magnitude when they are shared, because OpenMP workers then
wait on each other (measured in benchmarks/efficiency.md). Results do not depend on the thread
count; only the time does.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import torch

P = ParamSpec("P")
R = TypeVar("R")


def single_threaded(fn: Callable[P, R]) -> Callable[P, R]:
    """Run ``fn`` with ``torch.set_num_threads(1)``, restoring the previous setting."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        previous = torch.get_num_threads()
        if previous == 1:
            return fn(*args, **kwargs)
        torch.set_num_threads(1)
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(previous)

    return wrapper
