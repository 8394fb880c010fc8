"""``slerp``: spherical interpolation between two adapters' updates.

With ``D_0 = w_0 ΔW_0`` and ``D_1 = w_1 ΔW_1`` viewed as vectors, ``θ = arccos(<D_0, D_1> /
(|D_0| |D_1|))`` and

    slerp(t) = sin((1 − t) θ) / sin θ · D_0 + sin(t θ) / sin θ · D_1

(Shoemake 1985; as used for model merging by mergekit). The inner product and norms come
from small Gram matrices — ``<s_0 B_0 A_0, s_1 B_1 A_1>_F = s_0 s_1 Σ (B_0ᵀ B_1) ∘ (A_0 A_1ᵀ)``
— so no ``m × n`` matrix is formed; the result is a two-term weighted sum, re-factorised
exactly (or to ``--rank``). Nearly parallel updates (``sin θ < eps``) fall back to linear
interpolation; a target present in only one adapter interpolates towards zero linearly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

from adaptkit.api import MergeContext, MergeInput, MergeResult
from adaptkit.api.strategy import factored_merge


def frobenius_inner(a: MergeInput, b: MergeInput) -> float:
    """``<w_a ΔW_a, w_b ΔW_b>_F`` from the factors, in float64."""
    import torch

    pa, pb = a.pair, b.pair
    gram_b = pa.B.to(torch.float64).T @ pb.B.to(torch.float64)
    gram_a = pa.A.to(torch.float64) @ pb.A.to(torch.float64).T
    return a.weight * b.weight * pa.scale * pb.scale * float((gram_b * gram_a).sum())


class Slerp:
    name = "slerp"
    description = "spherical interpolation of two updates (param t), from small Gram matrices"
    params_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "t": {
                "type": "number",
                "minimum": 0,
                "maximum": 1,
                "default": 0.5,
                "description": "0 gives the first adapter, 1 the second",
            },
            "eps": {
                "type": "number",
                "exclusiveMinimum": 0,
                "default": 1e-6,
                "description": "below this sin(θ) interpolate linearly",
            },
        },
    }
    min_inputs = 2
    max_inputs = 2
    symmetric = False
    linear = False
    identity_params: ClassVar[dict[str, Any]] = {"t": 0.0}

    def merge(self, inputs: Sequence[MergeInput], ctx: MergeContext) -> MergeResult:
        t = float(ctx.params["t"])
        pairs = [i.pair for i in inputs]
        if len(inputs) == 1:
            # The other adapter lacks this target: its update is zero, direction undefined.
            only = inputs[0]
            c = (1.0 - t) if only.index == 0 else t
            result = factored_merge(pairs, [c * only.weight], ctx.rank)
            result.note = "target in one adapter only: linear interpolation towards zero"
            return result
        a, b = inputs
        na = math.sqrt(max(frobenius_inner(a, a), 0.0))
        nb = math.sqrt(max(frobenius_inner(b, b), 0.0))
        note = None
        if na == 0.0 or nb == 0.0:
            c0, c1, note = 1.0 - t, t, "a zero update: linear interpolation"
        else:
            cos = max(-1.0, min(1.0, frobenius_inner(a, b) / (na * nb)))
            theta = math.acos(cos)
            if math.sin(theta) < float(ctx.params["eps"]):
                c0, c1, note = 1.0 - t, t, "updates nearly parallel: linear interpolation"
            else:
                c0 = math.sin((1.0 - t) * theta) / math.sin(theta)
                c1 = math.sin(t * theta) / math.sin(theta)
        result = factored_merge(pairs, [c0 * a.weight, c1 * b.weight], ctx.rank)
        result.note = note
        return result
