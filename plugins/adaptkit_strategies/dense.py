"""The dense strategies as configurations of one class: sparsify × sign consensus × normalise.

Every dense strategy works on the updates ``ΔW_i = s_i B_i A_i`` row tile by row tile
(float32, :func:`adaptkit.combine.dense.dense_merge`) in three steps, then re-factorises the result:

1. **sparsify** each ``ΔW_i``: ``magnitude`` (keep the top ``density`` fraction of entries by
   magnitude, TIES' trim) or ``dare`` (keep each entry with probability ``density``, seeded per
   target and input, and rescale the kept ones; DARE);
2. **combine**: with sign **consensus**, elect a sign per entry and merge only the agreeing
   values (TIES' elect + disjoint merge, :func:`adaptkit.combine.dense.ties_merge`); without it, the
   weighted sum ``Σ w_i ΔW_i``;
3. **normalise** (where the strategy has it): divide by the (agreeing) weights.

The result is factorised to ``--rank`` (default: the largest input rank) with a seeded
randomised SVD, and the report gives that step's exact relative error. mergekit expresses its
ties/dare family the same way, as one generalised task-arithmetic method.

==================  ===========  =========  =======================
strategy            sparsify     consensus  normalize (default)
==================  ===========  =========  =======================
``ties``            magnitude    yes        yes (mergekit variant)
``dare_ties``       dare         yes        yes (mergekit variant)
``dare_linear``     dare         no         no
``magnitude_prune`` magnitude    no         —
==================  ===========  =========  =======================
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from adaptkit.api import MergeContext, MergeInput, MergeResult

_DENSITY = {
    "type": "number",
    "exclusiveMinimum": 0,
    "maximum": 1,
    "default": 0.5,
    "description": "fraction of each update's entries kept",
}
_CONSENSUS = {
    "variant": {"enum": ["peft", "mergekit"], "default": "peft"},
    "sign_method": {"enum": ["total", "frequency"], "default": "total"},
}


class DenseStrategy:
    """One dense strategy: a registered name plus its place in sparsify × consensus × normalise.

    Args:
        name: Registered name.
        description: One line for ``adaptkit plugins``.
        sparsify: ``"magnitude"`` or ``"dare"``.
        consensus: Elect signs and merge the agreeing values (TIES) instead of summing.
        normalize: Default of the ``normalize`` parameter, or ``None`` for a strategy without
            one.
    """

    min_inputs = 1
    max_inputs = None
    symmetric = True
    linear = True
    identity_params: ClassVar[dict[str, Any]] = {"density": 1.0}

    def __init__(
        self, name: str, description: str, *, sparsify: str, consensus: bool, normalize: bool | None
    ) -> None:
        self.name, self.description = name, description
        self.sparsify, self.consensus = sparsify, consensus
        props: dict[str, Any] = {"density": _DENSITY}
        if sparsify == "dare":
            props["rescale"] = {"enum": ["inverse_density", "l1"], "default": "inverse_density"}
        if consensus:
            props.update(_CONSENSUS)
        if normalize is not None:
            props["normalize"] = {
                "type": "boolean",
                "default": normalize,
                "description": "divide by the (agreeing) weights"
                + (" (mergekit variant)" if consensus else ""),
            }
        self.params_schema = {"type": "object", "additionalProperties": False, "properties": props}

    def merge(self, inputs: Sequence[MergeInput], ctx: MergeContext) -> MergeResult:
        import torch

        from adaptkit.api.strategy import DareMasks, dense_merge, ties_merge

        p = ctx.params
        pairs = [i.pair for i in inputs]
        weights = torch.tensor([i.weight for i in inputs], dtype=torch.float32)
        masks = None
        if self.sparsify == "dare":
            masks = DareMasks(ctx, [i.name for i in inputs], float(p["density"]), p["rescale"])
            masks.prepare(pairs)
            masks.start()

        def combine_tiles(tiles: Any, rows: Any) -> Any:
            kept = masks.apply(tiles) if masks is not None else tiles
            if self.consensus:
                return ties_merge(
                    kept,
                    weights,
                    variant=p["variant"],
                    sign_method=p["sign_method"],
                    normalize=p["normalize"],
                )
            return (kept * weights[:, None, None]).sum(dim=0)

        trim = float(p["density"]) if self.sparsify == "magnitude" else None
        D = dense_merge(pairs, combine_tiles, trim_density=trim)
        if not self.consensus and p.get("normalize"):
            D /= float(weights.sum())
        return refactorised(D, inputs, ctx)


def refactorised(D: Any, inputs: Sequence[MergeInput], ctx: MergeContext) -> MergeResult:
    """``D`` → a LoRA pair at the requested rank (default: the largest input rank)."""
    from adaptkit.api import LoraPair
    from adaptkit.api.strategy import factorise_dense

    default = max(i.pair.rank for i in inputs)
    f = factorise_dense(D, ctx.rank, default, ctx.generator("svd"))
    return MergeResult(
        pair=LoraPair(A=f.A, B=f.B, alpha=float(f.A.shape[0])),
        energy=f.energy,
        relative_error=f.relative_error,
    )
