"""LoRA layers: a frozen ``nn.Linear`` / HF ``Conv1D`` plus a low-rank update.

:class:`LoraLayer` is what every kind shares,

    y = base(x) + Δ(x),       Δ(x) = x · ΔWᵀ,       ΔW: (out, in) of rank ≤ r,

and the bake: ``bake()`` adds ``ΔW`` into the base weight (transposed for ``Conv1D``, in float64
so ``unbake()`` subtracts exactly what was added) and skips the low-rank path. A baked layer
refuses a second bake. Two kinds say what ``ΔW`` is:

* :class:`LoraLinear` (here), trainable factors::

      Δ(x) = s · dropout(x) @ Aᵀ @ Bᵀ,       A: (r, in),  B: (out, r)

  with ``s = alpha / r`` (or ``alpha / sqrt(r)`` for rsLoRA). ``B`` starts at zero so a freshly
  attached adapter leaves the model's output unchanged; ``A`` starts Kaiming-uniform
  (``a = sqrt(5)``, the ``nn.Linear`` default, as in the LoRA paper's reference code and PEFT),
  or Gaussian with std ``1/r`` (``init="gaussian"``).
* :class:`~adaptkit.nn.mixture.LoraMixture`, frozen factors of several adapters under learnable
  mixing weights (``combine --tune``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from adaptkit.errors import AdaptkitError
from adaptkit.nn.layout import module_kind


class LoraLayer(nn.Module):
    """A frozen base layer plus a low-rank update; subclasses say what the update is.

    Subclasses implement :meth:`update` (``Δ(x)``, in any float dtype; the forward casts it to
    the base output's) and :meth:`delta_weight` (the same ``ΔW`` as a matrix), and the two must
    agree: ``update(x) == x @ ΔWᵀ`` up to rounding. Bake, unbake and detach then work for every
    kind alike.

    Args:
        base: The ``nn.Linear`` (or bitsandbytes ``Linear4bit``) or HF ``Conv1D`` to adapt;
            its parameters are frozen.
    """

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base = base
        weight = base.weight
        # nn.Linear and bitsandbytes' Linear4bit (a Linear subclass whose packed weight has no
        # meaningful shape) say their sizes; HF Conv1D stores its weight in × out; an embedding
        # table is num × dim, "out × in" in the update's terms.
        self.conv1d = module_kind(base) == "conv1d"
        if self.conv1d:
            self.in_features, self.out_features = weight.shape[0], weight.shape[1]
        elif isinstance(base, nn.Embedding):
            self.out_features, self.in_features = weight.shape[0], weight.shape[1]
        else:
            self.in_features, self.out_features = base.in_features, base.out_features
        self.quantized = type(weight).__name__ == "Params4bit"
        self.baked = False
        self._baked_delta: torch.Tensor | None = None
        for p in self.base.parameters():
            p.requires_grad_(False)

    def update(self, x: torch.Tensor) -> torch.Tensor:
        """``Δ(x) = x · ΔWᵀ`` on the low-rank path (never forming ``ΔW``)."""
        raise NotImplementedError(f"{type(self).__name__} does not define its update")

    def delta_weight(self) -> torch.Tensor:
        """``ΔW`` in the base weight's layout (``out × in``; ``in × out`` for Conv1D), in float32
        (float64 over a float64 base)."""
        raise NotImplementedError(f"{type(self).__name__} does not define its ΔW")

    def delta_bias(self) -> torch.Tensor | None:
        """``Δb`` added to the base bias (a LoRA bias), in float32, or ``None``: most updates
        leave the bias alone."""
        return None

    def delta_depends_on_weight(self) -> bool:
        """Whether :meth:`delta_weight` is computed from the base weight (DoRA), so that
        :meth:`unbake` must subtract what :meth:`bake` added rather than recompute it."""
        return False

    def _work_dtype(self) -> torch.dtype:
        return torch.float64 if self.base.weight.dtype == torch.float64 else torch.float32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.baked:
            return y
        return y + self.update(x).to(y.dtype)

    @torch.no_grad()
    def bake(self) -> None:
        """Fold ``ΔW`` into the base weight, ``W ← W + ΔW`` (exactly undone by :meth:`unbake`)."""
        if self.baked:
            raise AdaptkitError("LoRA layer is already baked; unbake it first")
        if self.quantized:
            raise AdaptkitError(
                "refusing to bake into a 4-bit base layer: it would re-quantize and lose precision",
                hint="export with `adaptkit export --merged` (original or --merge-base dequantized weights)",
            )
        from adaptkit.nn.baking import add_delta

        W = self.base.weight
        # float64 so that unbake() subtracts exactly what bake() added
        delta = self.delta_weight().to(torch.float64)
        # An update computed from W itself (DoRA) would change once W holds it: keep it.
        self._baked_delta = delta if self.delta_depends_on_weight() else None
        W.copy_(add_delta(W, delta))
        db = self.delta_bias()
        if db is not None:
            self.base.bias.copy_(add_delta(self.base.bias, db.to(torch.float64)))
        self.baked = True

    @torch.no_grad()
    def unbake(self) -> None:
        """Subtract the ``ΔW`` :meth:`bake` added (the same float64 sum, so ``W`` is restored;
        exactly only if ``ΔW`` did not change in between)."""
        if not self.baked:
            raise AdaptkitError("LoRA layer is not baked")
        from adaptkit.nn.baking import add_delta

        W = self.base.weight
        delta = self._baked_delta if self._baked_delta is not None else self.delta_weight().to(torch.float64)
        self._baked_delta = None
        W.copy_(add_delta(W, -delta))
        db = self.delta_bias()
        if db is not None:
            self.base.bias.copy_(add_delta(self.base.bias, -db.to(torch.float64)))
        self.baked = False


class LoraLinear(LoraLayer):
    """Wraps ``base`` (kept frozen) with trainable LoRA factors.

    Args:
        base: The ``nn.Linear`` or ``Conv1D`` layer to adapt.
        rank: ``r`` (>= 1).
        alpha: LoRA alpha.
        dropout: Dropout on the LoRA input path during training.
        rslora: Scale by ``alpha/sqrt(r)`` instead of ``alpha/r``.
        dtype: dtype of the LoRA factors (fp32, bf16 or fp16).
        init: ``"kaiming"`` (default) or ``"gaussian"`` for ``A``; ``B`` is always zero.
    """

    def __init__(
        self,
        base: nn.Module,
        *,
        rank: int,
        alpha: float,
        dropout: float = 0.0,
        rslora: bool = False,
        dtype: torch.dtype = torch.float32,
        init: str = "kaiming",
    ) -> None:
        if rank < 1:
            raise AdaptkitError(f"rank must be >= 1, got {rank}", key="rank")
        super().__init__(base)
        self.rank, self.alpha, self.rslora = int(rank), float(alpha), bool(rslora)
        self.scale = self.alpha / (math.sqrt(self.rank) if self.rslora else self.rank)
        weight = base.weight
        device = weight.device if weight.device.type != "meta" else torch.device("cpu")
        self.lora_A = nn.Parameter(torch.empty(self.rank, self.in_features, device=device, dtype=dtype))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, self.rank, device=device, dtype=dtype))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        # A LoRA bias (PEFT's lora_bias) or a DoRA magnitude, set only when an adapter that has
        # one is loaded (adaptkit.nn.load).
        self.register_parameter("lora_bias", None)
        self.register_parameter("lora_magnitude", None)
        self.reset_parameters(init)

    def reset_parameters(self, init: str = "kaiming") -> None:
        with torch.no_grad():
            if init == "gaussian":
                nn.init.normal_(self.lora_A, std=1.0 / self.rank)
            elif init == "kaiming":
                nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
            else:
                raise AdaptkitError(f"unknown init {init!r}; valid: kaiming, gaussian", key="init")
            self.lora_B.zero_()

    def delta_weight(self) -> torch.Tensor:
        """``ΔW = s·B@A`` in the base weight's layout (``out × in``; ``in × out`` for Conv1D);
        for DoRA ``W' − W`` (see :mod:`adaptkit.nn.dora`)."""
        work = self._work_dtype()
        delta = (self.lora_B.to(work) @ self.lora_A.to(work)) * self.scale
        delta = delta.T if self.conv1d else delta
        if self.lora_magnitude is None:
            return delta
        from adaptkit.nn.dora import dora_weight

        W = self.base.weight.to(work)
        return dora_weight(W, delta, self.lora_magnitude, kind=self._kind, conv1d=self.conv1d) - W

    _kind = "linear"

    def delta_depends_on_weight(self) -> bool:
        return self.lora_magnitude is not None

    def update(self, x: torch.Tensor) -> torch.Tensor:
        """``s · dropout(x) @ Aᵀ @ Bᵀ``, computed in the factors' dtype. DoRA, as PEFT computes
        it unmerged: ``(μ − 1) · Wx + μ · s·BAx`` with ``μ = m / ‖W + s·BA‖`` per output."""
        if self.lora_magnitude is not None:
            return self._dora_update(x)
        h = self.dropout(x).to(self.lora_A.dtype)
        out = (h @ self.lora_A.T) @ self.lora_B.T
        if self.lora_bias is not None:
            out = out + self.lora_bias
        return out * self.scale

    def _dora_update(self, x: torch.Tensor) -> torch.Tensor:
        work = self._work_dtype()
        W = self.base.weight.to(work)
        W = W.T if self.conv1d else W  # out × in
        delta = (self.lora_B.to(work) @ self.lora_A.to(work)) * self.scale
        mu = self.lora_magnitude.to(work) / (W + delta).norm(dim=1)
        h = x.to(work)
        return (mu - 1) * (h @ W.T) + mu * (
            (h @ self.lora_A.to(work).T) @ self.lora_B.to(work).T
        ) * self.scale

    def delta_bias(self) -> torch.Tensor | None:
        """``Δb = s·b_B`` of a LoRA bias, or ``None``."""
        if self.lora_bias is None:
            return None
        return self.lora_bias.to(self._work_dtype()) * self.scale

    def extra_repr(self) -> str:
        kind = "Conv1D" if self.conv1d else "Linear"
        return (
            f"{kind}({self.in_features}→{self.out_features}), rank={self.rank}, "
            f"alpha={self.alpha:g}, scale={self.scale:g}, baked={self.baked}"
        )

    def export_pair(self) -> Any:
        """The factors as an :class:`adaptkit.lora.LoraPair` (copied, detached, whole).

        Under FSDP (``adaptkit train --shard``) each process holds a share of the rows of each
        factor (a ``DTensor``); they are gathered here, which is a collective: every process
        extracts, in the same order."""
        from adaptkit.lora import LoraPair

        return LoraPair(
            A=_whole(self.lora_A.detach()).clone().cpu(),
            B=_whole(self.lora_B.detach()).clone().cpu(),
            alpha=self.alpha,
            scaling="alpha/sqrt(r)" if self.rslora else "alpha/r",
            bias=None if self.lora_bias is None else _whole(self.lora_bias.detach()).clone().cpu(),
            magnitude=None
            if self.lora_magnitude is None
            else _whole(self.lora_magnitude.detach()).clone().cpu(),
        )


class LoraEmbedding(LoraLinear):
    """An ``nn.Embedding`` plus an embedding LoRA, ``E' = E + ΔE``, ``ΔE = s · B @ A`` with
    ``B: (num_embeddings, r)`` and ``A: (r, dim)`` (the table's layout, see :mod:`adaptkit.lora`).

    The lookup of ``ΔE`` is ``s · B[ids] @ A``. Embeddings that scale what they look up (Gemma's
    ``embed_scale``) scale the update alike, so the layer equals the baked table ``E + ΔE``.
    """

    _kind = "embedding"

    def update(self, x: torch.Tensor) -> torch.Tensor:
        """``s · B[ids] @ A`` (times the base's ``embed_scale``, if it has one); for DoRA the
        rows of ``E' − E``."""
        if self.lora_magnitude is not None:
            out = nn.functional.embedding(x, self.delta_weight())
        else:
            out = (nn.functional.embedding(x, self.lora_B) @ self.lora_A) * self.scale
        embed_scale = getattr(self.base, "embed_scale", None)
        return out if embed_scale is None else out * embed_scale

    def extra_repr(self) -> str:
        return (
            f"Embedding({self.out_features}×{self.in_features}), rank={self.rank}, "
            f"alpha={self.alpha:g}, scale={self.scale:g}, baked={self.baked}"
        )

    def export_pair(self) -> Any:
        import dataclasses

        return dataclasses.replace(super().export_pair(), kind="embedding")


def _whole(tensor: torch.Tensor) -> torch.Tensor:
    """A sharded ``DTensor``'s full value (gathered from every process); any other tensor as is."""
    full = getattr(tensor, "full_tensor", None)
    return full() if callable(full) else tensor
