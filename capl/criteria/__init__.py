"""Pruning criteria: one file each, registered by class name.

Adding a criterion is one file defining a :class:`~capl.criteria.base.Criterion` subclass plus
one import line here; the contract tests pick it up from the registry.
"""

from capl.criteria.apoz import APoZ
from capl.criteria.base import Criterion, available_criteria, get_criterion
from capl.criteria.bnscale import BNScale
from capl.criteria.kernel import IntraKernel, KernelMagnitude
from capl.criteria.l1norm import L1Norm
from capl.criteria.lrp import LRP
from capl.criteria.magnitude import Magnitude
from capl.criteria.ocap import OCAP
from capl.criteria.rand import Random
from capl.criteria.taylor import Taylor

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
