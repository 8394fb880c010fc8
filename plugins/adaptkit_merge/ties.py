"""``ties``: TIES-merging (Yadav et al., 2023, https://arxiv.org/abs/2306.01708).

On the dense updates ``ΔW_i = s_i B_i A_i`` (float32, row tiles):

1. **trim** — keep each input's top ``density`` fraction of entries by magnitude;
2. **elect** — per entry, a sign: of the summed values (``sign_method=total``) or of the
   summed signs (``frequency``);
3. **disjoint merge** — combine only the values agreeing with the elected sign:

   * ``variant=peft`` (PEFT; the paper at unit weights): elect on unweighted values,
     ``ΔW = Σ_{agree} w_i ΔW_i / #agree``;
   * ``variant=mergekit``: elect on weighted values ``w_i ΔW_i``,
     ``ΔW = Σ_{agree} w_i ΔW_i / Σ_{agree} w_i`` (``normalize=true``) or the plain sum.

The result is re-factorised to ``--rank`` (default: the largest input rank) with a seeded
randomised SVD; the report gives the exact relative error of that step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from adaptkit.merging import MergeContext, MergeInput, MergeResult


def refactorised(D: Any, inputs: Sequence[MergeInput], ctx: MergeContext) -> MergeResult:
    """Shared tail of the dense strategies: ``D`` → LoRA pair at the requested rank."""
    from adaptkit.dense import factorise_dense
    from adaptkit.lora import LoraPair

    default = max(i.pair.rank for i in inputs)
    f = factorise_dense(D, ctx.rank, default, ctx.generator("svd"))
    return MergeResult(
        pair=LoraPair(A=f.A, B=f.B, alpha=float(f.A.shape[0])),
        energy=f.energy,
        relative_error=f.relative_error,
    )


class Ties:
    name = "ties"
    description = "TIES: trim by magnitude, elect sign, disjoint merge (variants: peft, mergekit)"
    params_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "density": {
                "type": "number",
                "exclusiveMinimum": 0,
                "maximum": 1,
                "default": 0.5,
                "description": "fraction of each update's entries kept by the trim",
            },
            "variant": {"enum": ["peft", "mergekit"], "default": "peft"},
            "sign_method": {"enum": ["total", "frequency"], "default": "total"},
            "normalize": {
                "type": "boolean",
                "default": True,
                "description": "mergekit variant: divide by the agreeing weights",
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

        from adaptkit.dense import dense_merge, ties_merge

        p = ctx.params
        weights = torch.tensor([i.weight for i in inputs], dtype=torch.float32)
        D = dense_merge(
            [i.pair for i in inputs],
            lambda tiles, rows: ties_merge(
                tiles,
                weights,
                variant=p["variant"],
                sign_method=p["sign_method"],
                normalize=p["normalize"],
            ),
            trim_density=float(p["density"]),
        )
        return refactorised(D, inputs, ctx)
