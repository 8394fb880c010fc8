"""``cat``: concatenate the factors — exact, rank ``Σ r_i``.

``B = [w_1 s_1 B_1 … w_N s_N B_N]``, ``A = [A_1; …; A_N]`` so ``B A = Σ w_i s_i B_i A_i``
exactly, with scale 1 (``alpha = rank``). The factors are the inputs' own, so nothing is
re-factorised; use ``linear --rank k`` for a smaller rank.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from adaptkit.errors import AdaptkitError
from adaptkit.merging import MergeContext, MergeInput, MergeResult


class Cat:
    name = "cat"
    description = "exact concatenation of factors (rank = Σ r_i)"
    params_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "additionalProperties": False,
        "properties": {},
    }
    min_inputs = 1
    max_inputs = None
    symmetric = True
    linear = True
    identity_params: ClassVar[dict[str, Any]] = {}

    def merge(self, inputs: Sequence[MergeInput], ctx: MergeContext) -> MergeResult:
        import torch

        from adaptkit.factored import stack_factors
        from adaptkit.lora import LoraPair

        if ctx.rank.k is not None or ctx.rank.energy is not None:
            raise AdaptkitError(
                "cat keeps every factor (rank = Σ r_i); it takes no --rank",
                key="rank",
                hint="use --strategy linear --rank K for a smaller rank",
            )
        B, A = stack_factors([i.pair for i in inputs], [i.weight for i in inputs], torch.float32)
        return MergeResult(pair=LoraPair(A=A.contiguous(), B=B.contiguous(), alpha=float(A.shape[0])))
