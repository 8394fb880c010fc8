"""Builtin plugin: merge strategies, one per module.

Factored (exact, never form ``m × n``): ``linear``, ``cat``, ``svd``, ``slerp``.
Dense (elementwise on ``ΔW_i``, then re-factorised): ``ties``, ``dare_linear``,
``dare_ties``, ``magnitude_prune``.
"""

from adaptkit.hookspecs import hookimpl
from adaptkit_merge.cat import Cat
from adaptkit_merge.dare_linear import DareLinear
from adaptkit_merge.dare_ties import DareTies
from adaptkit_merge.linear import Linear
from adaptkit_merge.magnitude_prune import MagnitudePrune
from adaptkit_merge.slerp import Slerp
from adaptkit_merge.svd import Svd
from adaptkit_merge.ties import Ties


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
