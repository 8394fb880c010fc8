"""One target module's LoRA update.

A LoRA update replaces a frozen weight ``W`` (PyTorch ``nn.Linear`` layout, ``out × in``) by

    W' = W + ΔW,    ΔW = s · B @ A,    A: (r, in),  B: (out, r)

with the scale ``s`` given by the scaling mode:

* ``"alpha/r"`` — ``s = alpha / r`` (the LoRA paper, PEFT's default);
* ``"alpha/sqrt(r)"`` — ``s = alpha / sqrt(r)`` (rsLoRA, PEFT's ``use_rslora=True``);
* ``"explicit"`` — ``s`` is stored as is (combined adapters fold their weights in here).

A target is a linear layer (``nn.Linear``, or HF ``Conv1D``, whose ``in × out`` weight takes
``ΔWᵀ``) or, with ``kind="embedding"``, an ``nn.Embedding``. The factors are always in the
weight's own layout, so ``ΔW = s · B @ A`` has the weight's shape: for an embedding table
``E: (num_embeddings, dim)``, ``A: (r, dim)`` and ``B: (num_embeddings, r)``. PEFT stores an
embedding LoRA the other way round (``lora_embedding_A: (r, num_embeddings)``,
``lora_embedding_B: (dim, r)``, ``ΔE = s · (B_peft @ A_peft)ᵀ``), so ``A = B_peftᵀ`` and
``B = A_peftᵀ``: the same update, and every strategy, truncation and bake treats it like any
other ``s · B @ A``.

A linear target may also carry a LoRA bias (PEFT's ``lora_bias=True``: ``lora_B`` has a bias
``b_B``), which adds ``Δb = s · b_B`` to the layer's bias; it is as linear in the adapter as ``ΔW``.

An ``"experts"`` target is one 3-D parameter holding a mixture of experts' weights (PEFT's
``target_parameters`` on ``mlp.experts.gate_up_proj`` and kin): each of its ``E`` experts has
its own LoRA, so the factors are stacked, ``A: (E, r, in)``, ``B: (E, out, r)``, and
``ΔW[e] = s · B[e] @ A[e]`` (``out × in`` as PEFT counts the expert's features; see
:mod:`adaptkit.nn.experts` for where that lands in the parameter).

A DoRA target (PEFT's ``use_dora``) carries a magnitude vector ``m`` and is applied as
``W' = m ⊙ (W + ΔW) / ‖W + ΔW‖`` (see :mod:`adaptkit.nn.dora`): ``s · B @ A`` is then its
direction's update, not ``W' − W``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, get_args

from adaptkit.errors import InvalidAdapterError

if TYPE_CHECKING:
    import torch

Scaling = Literal["alpha/r", "alpha/sqrt(r)", "explicit"]
SCALING_MODES: tuple[str, ...] = get_args(Scaling)
Kind = Literal["linear", "embedding", "experts"]
#: What a target adapts: a linear layer (``nn.Linear`` / ``Conv1D``), an ``nn.Embedding``, or a
#: 3-D parameter of stacked experts' weights.
TARGET_KINDS: tuple[str, ...] = get_args(Kind)
#: dtypes a LoRA factor may have on disk and in memory.
FLOAT_DTYPE_NAMES = ("float16", "bfloat16", "float32", "float64")


@dataclass(eq=False)
class LoraPair:
    """The factors and scale of one target's update ``ΔW = s · B @ A``.

    Structure is checked on construction (2-D factors, matching rank, float dtypes, rank >= 1,
    a valid scale); finiteness of the values is checked by :meth:`check_finite`, which loaders
    and savers call, because it reads every element.

    Args:
        A: Down-projection, shape ``(r, in_features)``.
        B: Up-projection, shape ``(out_features, r)``.
        alpha: LoRA alpha; required unless ``scaling == "explicit"``.
        scaling: How the scale follows from ``alpha`` and the rank.
        explicit_scale: The scale itself, for ``scaling == "explicit"`` only.
        kind: ``"linear"``, ``"embedding"`` or ``"experts"`` (see the module docstring for the
            layouts; only ``"experts"`` has 3-D factors, one LoRA per expert).
        bias: ``lora_B``'s bias ``b_B`` (``(out_features,)``), for ``Δb = s · b_B``; linear only.
        magnitude: DoRA's magnitude ``m``: ``(out_features,)`` for a linear target,
            ``(in_features,)`` (the embedding dimension) for an embedding; ``None`` for LoRA.
    """

    A: torch.Tensor
    B: torch.Tensor
    alpha: float | None = None
    scaling: Scaling = "alpha/r"
    explicit_scale: float | None = None
    kind: Kind = "linear"
    bias: torch.Tensor | None = None
    magnitude: torch.Tensor | None = None

    def __post_init__(self) -> None:
        problems = self.structure_problems()
        if problems:
            raise InvalidAdapterError("; ".join(problems))

    @classmethod
    def with_scale(cls, A: torch.Tensor, B: torch.Tensor, scale: float) -> LoraPair:
        """A pair whose scale is stored explicitly (``ΔW = scale · B @ A``)."""
        return cls(A=A, B=B, scaling="explicit", explicit_scale=float(scale))

    def structure_problems(self) -> list[str]:
        """Every structural problem of this pair (empty when valid)."""
        problems = []
        ndim = 3 if self.kind == "experts" else 2
        for label, t in (("lora_A", self.A), ("lora_B", self.B)):
            if t.ndim != ndim:
                what = "3-D (experts, ·, ·) for an experts target" if ndim == 3 else "2-D"
                problems.append(f"{label} must be {what}, got shape {tuple(t.shape)}")
            if str(t.dtype).removeprefix("torch.") not in FLOAT_DTYPE_NAMES:
                problems.append(f"{label} has dtype {t.dtype}; expected one of {FLOAT_DTYPE_NAMES}")
        if problems:
            return problems
        r = self.A.shape[-2]
        if r < 1:
            problems.append("rank must be >= 1 (lora_A has 0 rows)")
        if self.A.shape[-1] < 1:
            problems.append(f"lora_A is {tuple(self.A.shape)}: in_features must be >= 1")
        if self.B.shape[-2] < 1:
            problems.append(f"lora_B is {tuple(self.B.shape)}: out_features must be >= 1")
        if self.B.shape[-1] != r:
            problems.append(
                f"rank mismatch: lora_A is {tuple(self.A.shape)} (r={r}) but lora_B is "
                f"{tuple(self.B.shape)} (r={self.B.shape[-1]})"
            )
        if ndim == 3 and (self.A.shape[0] != self.B.shape[0] or self.A.shape[0] < 1):
            problems.append(
                f"experts mismatch: lora_A is {tuple(self.A.shape)} but lora_B is {tuple(self.B.shape)}"
            )
        if self.kind not in TARGET_KINDS:
            problems.append(f"kind {self.kind!r} is not one of {TARGET_KINDS}")
        if self.bias is not None:
            if tuple(self.bias.shape) != (self.B.shape[0],):
                problems.append(f"lora_B.bias is {tuple(self.bias.shape)}; expected ({self.B.shape[0]},)")
            if str(self.bias.dtype).removeprefix("torch.") not in FLOAT_DTYPE_NAMES:
                problems.append(
                    f"lora_B.bias has dtype {self.bias.dtype}; expected one of {FLOAT_DTYPE_NAMES}"
                )
            if self.kind != "linear":
                problems.append("a LoRA bias needs a linear target (PEFT has none for embeddings or experts)")
            if self.magnitude is not None:
                problems.append("a DoRA target takes no LoRA bias (PEFT refuses lora_bias with use_dora)")
        if self.magnitude is not None and self.kind == "experts":
            problems.append("an experts target takes no DoRA magnitude (PEFT refuses use_dora there)")
        elif self.magnitude is not None:
            size = self.B.shape[0] if self.kind == "linear" else self.A.shape[1]
            if tuple(self.magnitude.shape) != (size,):
                problems.append(f"lora_magnitude_vector is {tuple(self.magnitude.shape)}; expected ({size},)")
            if str(self.magnitude.dtype).removeprefix("torch.") not in FLOAT_DTYPE_NAMES:
                dtype = self.magnitude.dtype
                problems.append(
                    f"lora_magnitude_vector has dtype {dtype}; expected one of {FLOAT_DTYPE_NAMES}"
                )
        if self.scaling not in SCALING_MODES:
            problems.append(f"scaling {self.scaling!r} is not one of {SCALING_MODES}")
        elif self.scaling == "explicit":
            if self.explicit_scale is None or not math.isfinite(self.explicit_scale):
                problems.append(f"explicit scaling needs a finite scale, got {self.explicit_scale!r}")
            if self.alpha is not None:
                problems.append("explicit scaling takes no alpha")
        else:
            if self.alpha is None or not math.isfinite(self.alpha):
                problems.append(f"alpha must be a finite number, got {self.alpha!r}")
            if self.explicit_scale is not None:
                problems.append(f"scaling {self.scaling!r} takes no explicit scale")
        return problems

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor of the update by its name under the target (``lora_A.weight``,
        ``lora_B.weight``, ``lora_B.bias``): the names the native format stores them under."""
        out = {"lora_A.weight": self.A, "lora_B.weight": self.B}
        if self.bias is not None:
            out["lora_B.bias"] = self.bias
        if self.magnitude is not None:
            out["lora_magnitude_vector"] = self.magnitude
        return out

    def check_finite(self) -> list[str]:
        """Names (as :meth:`tensors` gives them) of tensors holding NaN or Inf values (empty
        when all are finite)."""
        import torch

        return [label for label, t in self.tensors().items() if not bool(torch.isfinite(t).all())]

    @property
    def variant(self) -> str | None:
        """What makes this update more than a plain linear ``s · B @ A`` (``"DoRA"``,
        ``"embedding LoRA"``, ``"LoRA bias"``), or ``None``: for the paths that take plain LoRA
        only to name what they refuse."""
        if self.magnitude is not None:
            return "DoRA" if self.kind == "linear" else "DoRA embedding"
        if self.kind == "embedding":
            return "embedding LoRA"
        if self.kind == "experts":
            return "LoRA on experts"
        return "LoRA bias" if self.bias is not None else None

    @property
    def rank(self) -> int:
        """``r``, taken from the factor shapes (each expert's, for an experts target)."""
        return int(self.A.shape[-2])

    @property
    def in_features(self) -> int:
        return int(self.A.shape[-1])

    @property
    def out_features(self) -> int:
        return int(self.B.shape[-2])

    @property
    def experts(self) -> int | None:
        """``E``, the number of experts of an experts target (``None`` for the other kinds)."""
        return int(self.A.shape[0]) if self.kind == "experts" else None

    def expert_pairs(self) -> list[LoraPair]:
        """An experts target as one linear pair per expert (same scale): what ``combine`` merges."""
        return [
            LoraPair(A=a, B=b, alpha=self.alpha, scaling=self.scaling, explicit_scale=self.explicit_scale)
            for a, b in zip(self.A, self.B, strict=True)
        ]

    @property
    def scale(self) -> float:
        """``s`` such that ``ΔW = s · B @ A``."""
        if self.scaling == "explicit":
            assert self.explicit_scale is not None
            return self.explicit_scale
        assert self.alpha is not None
        if self.scaling == "alpha/sqrt(r)":
            return self.alpha / math.sqrt(self.rank)
        return self.alpha / self.rank

    def delta(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The dense update ``s · B @ A`` (``out × in``; ``E × out × in`` for experts), in float32
        unless ``dtype`` is given.

        Use ``torch.float64`` for reference checks.
        """
        import torch

        dt = torch.float32 if dtype is None else dtype
        return (self.B.to(dt) @ self.A.to(dt)) * self.scale

    def delta_norm(self) -> float:
        """``||ΔW||_F`` computed from the factors, never forming ``ΔW``.

        ``||s·B A||_F² = s² · tr(Aᵀ Bᵀ B A) = s² · Σ_ij (BᵀB)_ij (A Aᵀ)_ij`` — two ``r × r``
        Gram matrices, in float64.
        """
        import torch

        a = self.A.to(torch.float64)
        b = self.B.to(torch.float64)
        sq = float(((b.mT @ b) * (a @ a.mT)).sum())  # summed over experts, for an experts target
        return abs(self.scale) * math.sqrt(max(sq, 0.0))

    def delta_bias(self, dtype: torch.dtype | None = None) -> torch.Tensor | None:
        """``Δb = s · b_B`` (float32 unless ``dtype`` is given), or ``None`` without a LoRA bias."""
        import torch

        if self.bias is None:
            return None
        return self.bias.to(torch.float32 if dtype is None else dtype) * self.scale

    def num_params(self) -> int:
        return sum(t.numel() for t in self.tensors().values())
