"""One target's merge, whatever the target: what the engine hands a strategy, and what it adds.

A strategy sees plain linear LoRA pairs and returns one (:mod:`adaptkit.combine.strategy`). The
engine (:mod:`adaptkit.combine.engine`) calls :func:`merge_one` for a linear or embedding target
(an embedding LoRA is an ``s · B @ A`` in the table's layout like any other), and around it:

* :func:`merge_experts` for an experts target: the strategy runs once per expert, on that
  expert's LoRAs alone, and the results are stacked again;
* :func:`dora_passed_through` for a DoRA target, which has no factored sum: it is passed through
  alone at weight 1, or refused;
* :func:`with_target_extras` for what strategies never see: the target's kind, and the LoRA
  biases' exact weighted sum.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from adaptkit.combine.strategy import MergeContext, MergeInput, MergeResult
from adaptkit.errors import AdaptkitError, InvalidAdapterError
from adaptkit.rank import RankRequest


def merge_one(strategy: Any, these: Sequence[MergeInput], ctx: MergeContext, name: str) -> MergeResult:
    """The strategy's merge of one target, its output checked to keep the target's shape."""
    import torch

    try:
        result = strategy.merge(these, ctx)
    except torch.linalg.LinAlgError:
        # Decompositions fail to converge exactly when weight × factors overflow to inf.
        raise InvalidAdapterError(
            "the weighted update overflows (NaN/Inf in the decomposition); lower the weights",
            key=ctx.target,
        ) from None
    pair = result.pair
    expected = (these[0].pair.out_features, these[0].pair.in_features)
    if pair.kind == "experts" or (pair.out_features, pair.in_features) != expected:
        raise AdaptkitError(
            f"strategy {name!r} returned shape {'×'.join(map(str, pair.A.shape[:-2]))}"
            f"{pair.out_features}×{pair.in_features}, expected {expected[0]}×{expected[1]}",
            key=ctx.target,
        )
    return result


def merge_experts(strategy: Any, these: Sequence[MergeInput], ctx: MergeContext, name: str) -> MergeResult:
    """An experts target merged expert by expert: each expert's ``Σ wᵢ·ΔWᵢ[e]`` (or the
    strategy's blend) from that expert's LoRAs alone, exactly as for any linear target, then
    stacked again. Experts whose results have fewer directions are padded with zero ones (the same
    update), each expert's scale folded into its ``B``: ``alpha = rank``, scale 1."""
    import torch

    from adaptkit.lora import LoraPair

    experts = these[0].pair.experts or 0
    split = [i.pair.expert_pairs() for i in these]
    results = []
    for e in range(experts):
        inputs = [dataclasses.replace(i, pair=pairs[e]) for i, pairs in zip(these, split, strict=True)]
        results.append(
            merge_one(strategy, inputs, dataclasses.replace(ctx, target=f"{ctx.target}.{e}"), name)
        )
    rank = max(r.pair.rank for r in results)
    A = torch.zeros(experts, rank, results[0].pair.in_features)
    B = torch.zeros(experts, results[0].pair.out_features, rank)
    for e, r in enumerate(results):
        A[e, : r.pair.rank] = r.pair.A.float()
        B[e, :, : r.pair.rank] = r.pair.B.float() * r.pair.scale
    notes = sorted({r.note for r in results if r.note})
    return MergeResult(
        pair=LoraPair(A=A, B=B, alpha=float(rank), kind="experts"),
        energy=min(r.energy for r in results),
        relative_error=max(r.relative_error for r in results),
        note="; ".join(notes) or None,
    )


def dora_passed_through(
    these: Sequence[MergeInput], strategy: Any, params: Mapping[str, Any], rank: RankRequest, target: str
) -> Any:
    """A DoRA update, unchanged, where that is exactly what the combination means.

    ``W' = m ⊙ (W + ΔW) / ‖W + ΔW‖`` depends on the base weight, so no factored form sums,
    scales or truncates it (PEFT's ``add_weighted_adapter`` does so anyway, and is wrong). A
    DoRA target is therefore taken only as the one input on its target, at weight 1, without
    ``--rank``, under a linear strategy whose parameters leave one input as it is.

    Raises:
        InvalidAdapterError: any other combination of a DoRA target, naming it and the reason.
    """
    one = these[0]
    identity = all(params.get(k) == v for k, v in (getattr(strategy, "identity_params", None) or {}).items())
    why = None
    if len(these) > 1:
        why = f"adapters {these[0].name!r} and {these[1].name!r} both adapt it"
    elif one.weight != 1:
        why = f"adapter {one.name!r} has weight {one.weight:g}"
    elif rank.k is not None or rank.energy is not None:
        why = "--rank would truncate it"
    elif not getattr(strategy, "linear", False) or not identity:
        why = f"strategy {getattr(strategy, 'name', strategy)!r} with these parameters changes a lone input"
    if why is not None:
        raise InvalidAdapterError(
            f"a DoRA update (m ⊙ (W + ΔW) / ‖W + ΔW‖) depends on the base weight and has no exact "
            f"factored sum, scaling or truncation, but {why}",
            key=target,
            hint="combine a DoRA adapter only with adapters of other targets, at weight 1 (linear or cat, "
            "no --rank), or export it alone: adaptkit export --merged",
        )
    return one.pair


def with_target_extras(pair: Any, these: Sequence[MergeInput], strategy: Any, target: str) -> Any:
    """The strategy's pair with what strategies never see: the target's kind, and the LoRA
    biases' exact weighted sum ``Δb = Σ wᵢ·sᵢ·b_Bᵢ`` (stored over the result's scale). A bias
    is a vector, not a low-rank matrix: every linear strategy sums it as is (``svd`` truncates,
    ``ties``/``dare``/``magnitude_prune`` trim and drop the matrices only); a non-linear one
    (``slerp``) has no sum to take and is refused."""
    import torch

    extras: dict[str, Any] = {}
    if pair.kind != these[0].pair.kind:
        extras["kind"] = these[0].pair.kind
    biased = [i for i in these if i.pair.bias is not None]
    if biased:
        if not getattr(strategy, "linear", False):
            raise InvalidAdapterError(
                f"adapter {biased[0].name!r} has a LoRA bias here; strategy "
                f"{getattr(strategy, 'name', strategy)!r} blends non-linearly and a bias has no such blend",
                key=target,
                hint="use a linear strategy (linear, cat, svd, ties, dare_*, magnitude_prune)",
            )
        total = sum(i.weight * i.pair.scale * i.pair.bias.to(torch.float64) for i in biased)
        extras["bias"] = (total / pair.scale).to(torch.float32)
    return dataclasses.replace(pair, **extras) if extras else pair
