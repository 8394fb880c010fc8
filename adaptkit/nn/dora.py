"""DoRA (weight-decomposed LoRA, PEFT's ``use_dora``): the updated weight, as PEFT computes it.

DoRA splits the adapted weight into a direction and a trained magnitude ``m``:

    W' = m ⊙ (W + ΔW) / ‖W + ΔW‖,        ΔW = s · B @ A,

with the norm taken per output feature of a linear layer (each row of the ``out × in`` weight;
PEFT's ``linalg.norm(W + ΔW, dim=1)`` after turning a ``Conv1D`` weight to ``out × in``) and per
embedding dimension of an embedding table (each column of ``num × dim``: PEFT's
``DoraEmbeddingLayer`` works on ``Eᵀ``). ``m`` has one entry per row (``out``), or per column
(``dim``) for a table. ``W' − W`` depends on ``W`` itself, so a DoRA update is not a low-rank
``s · B @ A``: it cannot be scaled, negated or summed with another update and stay what was
trained, and ``combine`` passes it through only alone at weight 1.

PEFT's forward computes the same ``W'`` unmerged: ``(m/‖W+ΔW‖ − 1) · Wx + (m/‖W+ΔW‖) · ΔWx`` on
top of ``Wx + b`` (the bias untouched), so baking ``W'`` reproduces it exactly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def dora_weight(
    W: torch.Tensor, delta: torch.Tensor, magnitude: torch.Tensor, *, kind: str, conv1d: bool
) -> torch.Tensor:
    """``m ⊙ (W + ΔW) / ‖W + ΔW‖`` in ``W``'s layout (``in × out`` for Conv1D), computed in
    ``delta``'s dtype.

    Args:
        W: The base weight.
        delta: ``ΔW`` in ``W``'s layout and the work dtype.
        magnitude: ``m``: ``(out,)`` for a linear layer, ``(dim,)`` for an embedding table.
        kind: ``"linear"`` or ``"embedding"`` (which axis the norm runs along).
        conv1d: ``W`` is stored ``in × out``.
    """
    V = W.to(delta.dtype) + delta
    V = V.T if conv1d else V  # out × in (num × dim for a table)
    axis = 1 if kind == "linear" else 0
    norm = V.norm(dim=axis, keepdim=True)
    m = magnitude.to(delta.dtype)
    scale = (m.view(-1, 1) if axis == 1 else m.view(1, -1)) / norm
    new = V * scale
    return new.T if conv1d else new


def target_weight(
    pair: Any, W: torch.Tensor, *, conv1d: bool, weight: float = 1.0, key: str | None = None
) -> torch.Tensor:
    """The target's updated weight in ``W``'s layout and dtype: ``W + weight·ΔW``, or for a DoRA
    target ``m ⊙ (W + ΔW) / ‖W + ΔW‖`` (which takes ``weight`` 1 only).

    Raises:
        AdaptkitError: a DoRA target at another weight, or a result that is not finite in
            ``W``'s dtype.
    """
    from adaptkit.errors import AdaptkitError
    from adaptkit.nn.baking import add_delta, finite_as, target_delta

    delta = target_delta(pair, W, conv1d=conv1d, weight=weight)
    if pair.magnitude is None:
        return add_delta(W, delta, key=key)
    if weight != 1.0:
        raise AdaptkitError(
            f"a DoRA update cannot be applied at weight {weight:g}: its magnitude re-normalises "
            "W + ΔW, so W' − W is not linear in the adapter",
            key=key,
        )
    return finite_as(dora_weight(W, delta, pair.magnitude, kind=pair.kind, conv1d=conv1d), W.dtype, key=key)
