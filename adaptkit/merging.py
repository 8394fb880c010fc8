"""Deprecated: the strategy API moved to :mod:`adaptkit.strategy` (same names)."""

import warnings

from adaptkit.strategy import MergeContext, MergeInput, MergeResult, SumStrategy, factored_merge

warnings.warn("adaptkit.merging moved to adaptkit.strategy", DeprecationWarning, stacklevel=2)

__all__ = ["MergeContext", "MergeInput", "MergeResult", "SumStrategy", "factored_merge"]
