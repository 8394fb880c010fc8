"""``dare_linear``: DARE drop-and-rescale, then a weighted sum.

Each ``ΔW_i`` keeps an entry with probability ``density`` (seeded per target and input from
``--seed``), kept entries rescaled by ``1/density`` (``rescale=inverse_density``: paper and
PEFT) or so the L1 norm is unchanged (``rescale=l1``: mergekit); then
``ΔW = Σ w_i ΔW_i`` (divided by ``Σ w_i`` when ``normalize``). Yu et al., 2024,
https://arxiv.org/abs/2311.03099. Re-factorised to ``--rank`` like ``ties``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from adaptkit.merging import MergeContext, MergeInput, MergeResult
from adaptkit_merge.ties import refactorised


class DareLinear:
    name = "dare_linear"
    description = "DARE random drop + rescale, then weighted sum (seeded, reproducible)"
    params_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "density": {
                "type": "number",
                "exclusiveMinimum": 0,
                "maximum": 1,
                "default": 0.5,
                "description": "probability of keeping each entry",
            },
            "rescale": {"enum": ["inverse_density", "l1"], "default": "inverse_density"},
            "normalize": {
                "type": "boolean",
                "default": False,
                "description": "divide the sum by the sum of weights",
            },
        },
    }
    min_inputs = 1
    max_inputs = None
    symmetric = True
    linear = True
    identity_params: ClassVar[dict[str, Any]] = {"density": 1.0}

    def merge(self, inputs: Sequence[MergeInput], ctx: MergeContext) -> MergeResult:
        import torch

        from adaptkit.dense import DareMasks, dense_merge

        p = ctx.params
        pairs = [i.pair for i in inputs]
        weights = torch.tensor([i.weight for i in inputs], dtype=torch.float32)[:, None, None]
        masks = DareMasks(ctx, [i.name for i in inputs], float(p["density"]), p["rescale"])
        masks.prepare(pairs)
        masks.start()
        D = dense_merge(pairs, lambda tiles, rows: (masks.apply(tiles) * weights).sum(dim=0))
        if p["normalize"]:
            D /= float(weights.sum())
        return refactorised(D, inputs, ctx)
