"""Pruning criteria: one file each, registered by class name.

Adding a criterion is one file defining a :class:`~capl.strategies.base.Criterion` subclass plus
one import line here; the contract tests pick it up from the registry.
"""

from capl.strategies.base import Criterion, available_criteria, get_criterion

__all__ = ["Criterion", "available_criteria", "get_criterion"]
