"""``svd``: the weighted sum re-factorised to a fixed rank (default: the largest input rank).

Same result as ``linear --rank k`` (optimal rank-``k`` truncation of ``Σ w_i s_i B_i A_i``),
offered under PEFT's name with PEFT's default rank. Two of PEFT's ``svd`` bugs are absent by
construction: each ``ΔW_i`` is scaled by ``s_i`` exactly once (PEFT scales it twice whenever
``alpha != r``, and by a further ``sqrt(r)`` for rsLoRA), and no ``m × n`` matrix or full SVD
is formed.
"""

from __future__ import annotations

from collections.abc import Sequence

from adaptkit.api import MergeContext, MergeInput, MergeResult
from adaptkit.api.strategy import SumStrategy, factored_merge


class Svd(SumStrategy):
    name = "svd"
    description = "weighted sum truncated to rank k (default: max input rank), from the factors"

    def merge(self, inputs: Sequence[MergeInput], ctx: MergeContext) -> MergeResult:
        default = max(i.pair.rank for i in inputs)
        return factored_merge(
            [i.pair for i in inputs], [i.weight for i in inputs], ctx.rank, default_rank=default
        )
