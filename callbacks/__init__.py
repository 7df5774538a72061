"""Lightning callbacks of capl: thin adapters over capl's plain pruning and benchmark code."""

from capl.callbacks.benchmark import BENCHMARK_FILE, BenchmarkCallback
from capl.callbacks.pruning import PruningCallback

__all__ = ["BENCHMARK_FILE", "BenchmarkCallback", "PruningCallback"]
