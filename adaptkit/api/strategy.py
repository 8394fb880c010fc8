"""Helpers for merge strategies (the records themselves are in :mod:`adaptkit.api`).

:func:`factored_merge` re-factorises ``Σ c_i·B_i·A_i`` exactly from stacked factors;
:class:`SumStrategy` gives the defaults of a linear, symmetric strategy; the dense helpers
(:func:`dense_merge`, :func:`ties_merge`, :class:`DareMasks`, :func:`factorise_dense`) form
``ΔW`` tile by tile for strategies that need the dense matrix (TIES, DARE, magnitude pruning).
:class:`Concatenate` is the engine's exact sum, for a strategy that only names it.
"""

from __future__ import annotations

from adaptkit.combine.dense import DareMasks, dense_merge, factorise_dense, ties_merge
from adaptkit.combine.engine import Concatenate
from adaptkit.combine.strategy import SumStrategy, factored_merge

__all__ = [
    "Concatenate",
    "DareMasks",
    "SumStrategy",
    "dense_merge",
    "factored_merge",
    "factorise_dense",
    "ties_merge",
]
