"""``dare_ties``: DARE drop-and-rescale, then TIES sign election and disjoint merge.

Drops as in ``dare_linear`` (seeded per target and input), then elects signs and merges the
agreeing values exactly as ``ties`` does (``variant``: ``peft`` elects on unweighted values
and divides by the agreeing count; ``mergekit`` elects on weighted values and divides by the
agreeing weights). Re-factorised to ``--rank`` like ``ties``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from adaptkit.merging import MergeContext, MergeInput, MergeResult
from adaptkit_merge.ties import refactorised


class DareTies:
    name = "dare_ties"
    description = "DARE random drop + rescale, then TIES sign election and disjoint merge"
    params_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "density": {"type": "number", "exclusiveMinimum": 0, "maximum": 1, "default": 0.5},
            "rescale": {"enum": ["inverse_density", "l1"], "default": "inverse_density"},
            "variant": {"enum": ["peft", "mergekit"], "default": "peft"},
            "sign_method": {"enum": ["total", "frequency"], "default": "total"},
            "normalize": {"type": "boolean", "default": True},
        },
    }
    min_inputs = 1
    max_inputs = None
    symmetric = True
    linear = True
    identity_params: ClassVar[dict[str, Any]] = {"density": 1.0}

    def merge(self, inputs: Sequence[MergeInput], ctx: MergeContext) -> MergeResult:
        import torch

        from adaptkit.dense import DareMasks, dense_merge, ties_merge

        p = ctx.params
        pairs = [i.pair for i in inputs]
        weights = torch.tensor([i.weight for i in inputs], dtype=torch.float32)
        masks = DareMasks(ctx, [i.name for i in inputs], float(p["density"]), p["rescale"])
        masks.prepare(pairs)
        masks.start()
        D = dense_merge(
            pairs,
            lambda tiles, rows: ties_merge(
                masks.apply(tiles),
                weights,
                variant=p["variant"],
                sign_method=p["sign_method"],
                normalize=p["normalize"],
            ),
        )
        return refactorised(D, inputs, ctx)
