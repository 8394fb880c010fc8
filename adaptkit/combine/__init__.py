"""Combining adapters (adapter ⊕ adapter → adapter): the engine, the strategy API, the
low-rank (factored) and dense math, and data-tuned weights.

The engine's API is importable from here: ``from adaptkit.combine import combine``; its inputs
are :class:`adaptkit.WeightedAdapter` records.
"""

from adaptkit.combine.engine import (
    CombineResult,
    Concatenate,
    TargetReport,
    check_request,
    check_saved_modules,
    combine,
    combined_saved_modules,
    combined_tokens,
    file_sha256,
    fill_params,
)

__all__ = [
    "CombineResult",
    "Concatenate",
    "TargetReport",
    "check_request",
    "check_saved_modules",
    "combine",
    "combined_saved_modules",
    "combined_tokens",
    "file_sha256",
    "fill_params",
]
