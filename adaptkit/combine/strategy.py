"""The strategy-facing API: what a merge strategy receives and returns.

The combine engine (:mod:`adaptkit.combine`) calls ``strategy.merge(inputs, ctx)`` once per
target module with that target's inputs (adapters lacking the target, and adapters at
weight 0, are left out: they contribute nothing). A strategy returns a
:class:`MergeResult` holding one :class:`~adaptkit.lora.LoraPair` with its scale folded in
(``alpha = rank``, scale 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from adaptkit.combine.factored import factorise_product, stack_factors
from adaptkit.plugins.records import MergeContext, MergeInput, MergeResult
from adaptkit.rank import RankRequest

if TYPE_CHECKING:
    from adaptkit.lora import LoraPair


__all__ = ["MergeContext", "MergeInput", "MergeResult", "SumStrategy", "factored_merge"]


def factored_merge(
    pairs: Sequence[LoraPair],
    coefficients: Sequence[float],
    rank: RankRequest,
    *,
    default_rank: int | None = None,
) -> MergeResult:
    """``Σ c_i ΔW_i`` re-factorised from the stacked factors (see :mod:`adaptkit.combine.factored`).

    Args:
        pairs: Input updates (their own scales are applied).
        coefficients: ``c_i`` per input.
        rank: Requested rank; with no request the result keeps ``default_rank`` directions,
            or all numerically non-zero ones when ``default_rank`` is ``None`` (exact).
    """
    import torch

    from adaptkit.lora import LoraPair

    # float32 unless an input is float64 (see factorise_product); bf16/fp16 inputs are upcast.
    work = (
        torch.float64
        if any(p.A.dtype == torch.float64 or p.B.dtype == torch.float64 for p in pairs)
        else torch.float32
    )
    B, A = stack_factors(pairs, coefficients, work)
    f = factorise_product(B, A)
    exact_rank = max(1, f.numerical_rank())
    k = max(1, rank.choose(f.S, default=default_rank if default_rank is not None else exact_rank))
    Bk, Ak = f.truncate(k, torch.float32)
    if Bk.shape[1] < k:  # fewer directions exist than asked for
        k = Bk.shape[1]
    return MergeResult(
        pair=LoraPair(A=Ak, B=Bk, alpha=float(k)),
        energy=f.energy(k),
        relative_error=f.relative_error(k),
    )


class SumStrategy:
    """Defaults for a strategy that takes any number of inputs and no parameters, and whose
    result is linear in the inputs and symmetric in their order (``linear``, ``svd``, ``cat``).
    Subclasses set ``name``, ``description`` and ``merge``."""

    name: str
    description: str
    params_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "additionalProperties": False,
        "properties": {},
    }
    min_inputs = 1
    max_inputs: int | None = None
    symmetric = True
    linear = True
    identity_params: ClassVar[dict[str, Any]] = {}
