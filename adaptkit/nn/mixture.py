"""``LoraMixture``: a LoRA layer whose update mixes frozen adapters under learnable weights.

Given adapters ``i`` with static weights ``wᵢ``, scales ``sᵢ`` and factors ``Bᵢ Aᵢ`` at a
target, and a table ``c`` of mixing weights (one row per adapter), the layer adds

    ΔW = Σᵢ Σⱼ c[i, k(t) + δⱼ] · wᵢ · sᵢ · bᵢⱼ aᵢⱼᵀ,

with ``bᵢⱼ`` the ``j``-th column of ``Bᵢ``, ``aᵢⱼ`` the ``j``-th row of ``Aᵢ``, ``k(t)`` the
target's column of the table and ``δⱼ = 0`` (one weight per adapter and target) or ``δⱼ = j``
(``per_component``: one weight per rank-1 component). Stacking every adapter's factors,
``A = [A₁; A₂; …]`` and ``B = [w₁s₁B₁, w₂s₂B₂, …]``, it is one low-rank product,

    Δ(x) = ((x Aᵀ) ⊙ c[slots]) Bᵀ,

where ``slots`` holds, per stacked rank column, its flat index into ``c``. The factors are
buffers (frozen, never in ``parameters()``); ``c`` is one tensor shared by every layer, so an
optimizer stepping it moves all of them (``combine --tune`` fits it by gradient or search).

:func:`attach_mixture` puts these layers on a model through :func:`~adaptkit.nn.layout.replace_module`;
:func:`adaptkit.nn.detach` takes them off, and :func:`adaptkit.nn.bake` bakes them, as it does
:class:`~adaptkit.nn.layers.LoraLinear`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from adaptkit.errors import AdaptkitError
from adaptkit.nn.layers import LoraLayer

if TYPE_CHECKING:
    from adaptkit.adapter import WeightedAdapter


class LoraMixture(LoraLayer):
    """A frozen base layer plus ``Δ(x) = ((x Aᵀ) ⊙ c[slots]) Bᵀ`` (see the module docstring).

    The low-rank path runs in ``A``'s dtype (float32 from :func:`attach_mixture`), whatever the
    base's, as the factors were stored.

    Args:
        base: The layer to adapt (frozen).
        A: Stacked ``A`` factors, ``(R, in)``.
        B: Stacked ``B`` factors with each adapter's ``wᵢ·sᵢ`` folded in, ``(out, R)``.
        slots: ``(R,)`` long: the flat index into ``mix`` of each rank column's weight.
        mix: The mixing table ``c`` (any shape; read flattened), shared, not copied.
    """

    def __init__(
        self, base: nn.Module, A: torch.Tensor, B: torch.Tensor, slots: torch.Tensor, mix: torch.Tensor
    ) -> None:
        super().__init__(base)
        self.register_buffer("A", A, persistent=False)
        self.register_buffer("B", B, persistent=False)
        self.register_buffer("slots", slots, persistent=False)
        # A plain attribute, not a buffer: one tensor serves every layer and its owner trains it.
        self.mix = mix

    def weights(self) -> torch.Tensor:
        """``c[slots]``: each stacked rank column's mixing weight, in ``A``'s dtype."""
        return self.mix.reshape(-1)[self.slots].to(self.A.dtype)

    def update(self, x: torch.Tensor) -> torch.Tensor:
        h = (x.to(self.A.dtype) @ self.A.T) * self.weights()
        return h @ self.B.T

    def delta_weight(self) -> torch.Tensor:
        """``ΔW = B · diag(c[slots]) · A`` at the mixing weights of the moment."""
        work = self._work_dtype()
        c = self.weights().detach().to(work)
        delta = (self.B.to(work) * c) @ self.A.to(work)
        return delta.T if self.conv1d else delta

    def extra_repr(self) -> str:
        kind = "Conv1D" if self.conv1d else "Linear"
        return (
            f"{kind}({self.in_features}→{self.out_features}), columns={self.A.shape[0]}, baked={self.baked}"
        )


def attach_mixture(
    model: nn.Module,
    inputs: Sequence[WeightedAdapter],
    mix: torch.Tensor,
    columns: Mapping[str, int],
    *,
    per_component: bool = False,
) -> list[str]:
    """Wrap every target of ``inputs`` in ``model`` with a :class:`LoraMixture` over them, and
    freeze the model (only ``mix`` can learn).

    Input ``i``'s rank column ``j`` at target ``t`` is weighted by ``mix[i, columns[t]]``, or
    with ``per_component`` by ``mix[i, columns[t] + j]``. Inputs of weight 0 are left out, and
    so is a target only they have. Nothing changes unless every target resolves to a layer of
    the adapters' shape.

    Args:
        model: The base model (no LoRA layers attached).
        inputs: The adapters, each with its static weight ``wᵢ``.
        mix: The ``(len(inputs), columns)`` table of mixing weights, shared by every layer.
        columns: Each target's (first) column in ``mix``.
        per_component: One weight per rank-1 component instead of per adapter and target.

    Returns:
        The wrapped module paths, sorted.

    Raises:
        AdaptkitError: LoRA layers already attached, ``mix`` of the wrong shape, a target
            without a column or one whose components run past ``mix``, or a target the model
            lacks (or of another shape).
    """
    from adaptkit.adapter import Adapter
    from adaptkit.nn.baking import resolve_targets
    from adaptkit.nn.inject import refuse_attached
    from adaptkit.nn.layout import replace_module

    refuse_attached(model)
    if mix.dim() != 2 or mix.shape[0] != len(inputs):
        raise AdaptkitError(
            f"mix must be ({len(inputs)}, columns), one row per input; got {tuple(mix.shape)}"
        )
    adapters = [item.adapter for item in inputs]
    targets = sorted({t for a in adapters for t in a.targets})
    missing = [t for t in targets if t not in columns]
    if missing:
        raise AdaptkitError(f"target {missing[0]!r} has no column in the mixing table")
    variants = [(t, p.variant) for a in adapters for t, p in sorted(a.targets.items()) if p.variant]
    if variants:
        raise AdaptkitError(
            f"target {variants[0][0]!r} is a {variants[0][1]}; the tuned mixture mixes plain linear "
            "LoRA updates only",
            hint="combine this adapter without --tune",
        )
    union = Adapter(targets={t: next(a.targets[t] for a in adapters if t in a.targets) for t in targets})
    resolve_targets(model, union)  # every target exists with the right shape
    n_columns = mix.shape[1]
    plans = {}
    for target in targets:
        parts = [
            (i, item.adapter.targets[target], float(item.weight))
            for i, item in enumerate(inputs)
            if target in item.adapter.targets and item.weight != 0
        ]
        if not parts:
            continue
        A = torch.cat([p.A.float() for _, p, _ in parts])
        B = torch.cat([p.B.float() * (p.scale * w) for _, p, w in parts], dim=1)
        offsets = [
            torch.arange(p.rank) if per_component else torch.zeros(p.rank, dtype=torch.long)
            for _, p, _ in parts
        ]
        if columns[target] + max(int(o.max()) for o in offsets) >= n_columns:
            raise AdaptkitError(
                f"target {target!r}: its components run past the mixing table's {n_columns} columns"
            )
        slots = torch.cat(
            [i * n_columns + columns[target] + o for (i, _, _), o in zip(parts, offsets, strict=True)]
        )
        plans[target] = (A, B, slots)
    # Every check passed: now the model changes. As attach() does, nothing of the model trains,
    # only ``mix``, which the caller owns.
    for p in model.parameters():
        p.requires_grad_(False)
    for target, (A, B, slots) in plans.items():
        base = model.get_submodule(target)
        device = next(base.parameters()).device
        replace_module(model, target, LoraMixture(base, A.to(device), B.to(device), slots.to(device), mix))
    return sorted(plans)
