"""Builtin plugin: merge strategies, one per module.

Factored (exact, never form ``m × n``): ``linear``, ``cat``, ``svd``, ``slerp``.
Dense (elementwise on ``ΔW_i``, then re-factorised): ``ties``, ``dare_linear``,
``dare_ties``, ``magnitude_prune``.
"""

from adaptkit.api import hookimpl
from adaptkit_strategies.cat import Cat
from adaptkit_strategies.dare_linear import DareLinear
from adaptkit_strategies.dare_ties import DareTies
from adaptkit_strategies.linear import Linear
from adaptkit_strategies.magnitude_prune import MagnitudePrune
from adaptkit_strategies.slerp import Slerp
from adaptkit_strategies.svd import Svd
from adaptkit_strategies.ties import Ties


@hookimpl
def register_merge_strategies(register):
    for strategy in (
        Linear(),
        Cat(),
        Svd(),
        Slerp(),
        Ties(),
        DareLinear(),
        DareTies(),
        MagnitudePrune(),
    ):
        register(strategy)
