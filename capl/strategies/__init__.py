"""Pruning criteria: one file each, registered by class name.

Adding a criterion is one file defining a :class:`~capl.strategies.base.Criterion` subclass plus
one import line here; the contract tests pick it up from the registry.
"""

from capl.strategies.apoz import APoZ
from capl.strategies.base import Criterion, available_criteria, get_criterion
from capl.strategies.bnscale import BNScale
from capl.strategies.kernel import IntraKernel, KernelMagnitude
from capl.strategies.l1norm import L1Norm
from capl.strategies.lrp import LRP
from capl.strategies.magnitude import Magnitude
from capl.strategies.ocap import OCAP
from capl.strategies.rand import Random
from capl.strategies.taylor import Taylor

__all__ = [
    "LRP",
    "OCAP",
    "APoZ",
    "BNScale",
    "Criterion",
    "IntraKernel",
    "KernelMagnitude",
    "L1Norm",
    "Magnitude",
    "Random",
    "Taylor",
    "available_criteria",
    "get_criterion",
]
