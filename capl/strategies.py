"""The criteria's former package name, kept so configs written for capl 0.1 still load.

``class_path: capl.strategies.OCAP`` resolves to :class:`capl.criteria.OCAP`; new configs use
``capl.criteria`` (or the short class name).
"""

from capl.criteria import *  # noqa: F403
from capl.criteria import __all__  # noqa: F401
