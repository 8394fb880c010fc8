"""Deprecated: the strategy API moved to :mod:`adaptkit.combine.strategy` (same names)."""

import warnings

from adaptkit.combine.strategy import MergeContext, MergeInput, MergeResult, SumStrategy, factored_merge

warnings.warn("adaptkit.merging moved to adaptkit.combine.strategy", DeprecationWarning, stacklevel=2)

__all__ = ["MergeContext", "MergeInput", "MergeResult", "SumStrategy", "factored_merge"]
