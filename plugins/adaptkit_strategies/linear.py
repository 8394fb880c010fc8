"""``linear``: the exact weighted sum ``ΔW = Σ w_i s_i B_i A_i`` (task arithmetic).

Negative weights subtract an adapter (task negation). The sum is kept factored and
re-factorised from the stacked factors (QR + SVD of the small core, see
:mod:`adaptkit.combine.factored`): without ``--rank`` the result is exact at its numerical rank
(≤ Σ r_i); with ``--rank k`` it is the optimal rank-``k`` approximation (Eckart–Young), and
``--rank auto:E`` keeps the smallest rank retaining fraction ``E`` of ``||ΔW||_F²``.

Unlike PEFT's ``linear`` (which mixes A's and B's separately with ``sqrt(w·s)`` and so adds
cross terms ``B_i A_j``), nothing here is approximate unless a rank is requested.
Task arithmetic: Ilharco et al., 2023, https://arxiv.org/abs/2212.04089
"""

from __future__ import annotations

from collections.abc import Sequence

from adaptkit.api import MergeContext, MergeInput, MergeResult
from adaptkit.api.strategy import SumStrategy, factored_merge


class Linear(SumStrategy):
    name = "linear"
    description = "exact weighted sum Σ w_i·ΔW_i, kept factored; optimal rank-k with --rank"

    def merge(self, inputs: Sequence[MergeInput], ctx: MergeContext) -> MergeResult:
        return factored_merge([i.pair for i in inputs], [i.weight for i in inputs], ctx.rank)
