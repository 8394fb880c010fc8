"""``magnitude_prune``: keep each update's largest entries, then a weighted sum.

Each ``ΔW_i`` keeps its top ``density`` fraction of entries by magnitude (no rescale, as in
PEFT's ``magnitude_prune``); ``ΔW = Σ w_i ΔW_i``. Re-factorised to ``--rank`` like ``ties``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from adaptkit.merging import MergeContext, MergeInput, MergeResult
from adaptkit_merge.ties import refactorised


class MagnitudePrune:
    name = "magnitude_prune"
    description = "keep each update's largest-magnitude entries, then weighted sum"
    params_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "density": {"type": "number", "exclusiveMinimum": 0, "maximum": 1, "default": 0.5},
        },
    }
    min_inputs = 1
    max_inputs = None
    symmetric = True
    linear = True
    identity_params: ClassVar[dict[str, Any]] = {"density": 1.0}

    def merge(self, inputs: Sequence[MergeInput], ctx: MergeContext) -> MergeResult:
        import torch

        from adaptkit.dense import dense_merge

        weights = torch.tensor([i.weight for i in inputs], dtype=torch.float32)[:, None, None]
        D = dense_merge(
            [i.pair for i in inputs],
            lambda tiles, rows: (tiles * weights).sum(dim=0),
            trim_density=float(ctx.params["density"]),
        )
        return refactorised(D, inputs, ctx)
