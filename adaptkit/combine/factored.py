"""Exact algebra on sums of low-rank updates, without ever forming an ``m × n`` matrix.

A weighted sum of LoRA updates is itself a product of two stacked factors::

    ΔW = Σ_i c_i · B_i A_i = B̃ Ã,    B̃ = [c_1 B_1 … c_N B_N]  (m × R),
                                     Ã = [A_1; …; A_N]         (R × n),    R = Σ r_i

with ``c_i = w_i · s_i`` (the user's weight times the adapter's own scale). To re-factorise
``B̃ Ã`` to rank ``k``:

    B̃ = Q_b R_b,   Ãᵀ = Q_a R_a          (thin QR)
    R_b R_aᵀ = U S Vᵀ                     (SVD of the small R × R core)
    ΔW = (Q_b U) S (Q_a V)ᵀ               (exact; a thin SVD of ΔW)

and truncating ``S`` to its ``k`` largest values gives the optimal rank-``k`` approximation
(Eckart–Young). Cost ``O((m + n) R²)``; memory: the factors only. The factors are split
evenly, ``B = Q_b U_k S_k^½`` and ``A = S_k^½ V_kᵀ Q_aᵀ``, so neither carries all the scale.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from adaptkit.lora import LoraPair

#: Relative singular-value cut-off below which directions count as numerically zero.
RANK_TOL = 1e-7


@dataclass
class Factorisation:
    """A thin SVD ``ΔW = U diag(S) Vᵀ`` held as factors: ``U: (m, p)``, ``V: (n, p)``."""

    U: torch.Tensor
    S: torch.Tensor
    V: torch.Tensor

    def numerical_rank(self) -> int:
        if self.S.numel() == 0 or float(self.S[0]) == 0.0:
            return 0
        return int((self.S[0] * RANK_TOL < self.S).sum())

    def energy(self, k: int) -> float:
        """Fraction of ``||ΔW||_F²`` kept by the top ``k`` directions."""
        sq = self.S.double() ** 2
        total = float(sq.sum())
        return 1.0 if total == 0.0 else float(sq[:k].sum()) / total

    def relative_error(self, k: int) -> float:
        """``||ΔW − ΔW_k||_F / ||ΔW||_F`` for the rank-``k`` truncation (exact)."""
        return math.sqrt(max(0.0, 1.0 - self.energy(k)))

    def truncate(self, k: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Balanced factors ``(B, A)`` of the rank-``k`` truncation, in ``dtype``."""
        root = self.S[:k].sqrt().to(self.U.dtype)
        B = self.U[:, :k] * root
        A = root[:, None] * self.V[:, :k].T
        return B.to(dtype).contiguous(), A.to(dtype).contiguous()


def stack_factors(
    pairs: Sequence[LoraPair], coefficients: Sequence[float], dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B̃, Ã)`` with ``B̃ = [c_i s_i B_i]`` and ``Ã = [A_i]``, so ``B̃ Ã = Σ c_i ΔW_i``."""
    import torch

    Bs = [p.B.to(dtype) * (c * p.scale) for p, c in zip(pairs, coefficients, strict=True)]
    As = [p.A.to(dtype) for p in pairs]
    return torch.cat(Bs, dim=1), torch.cat(As, dim=0)


def factorise_product(B: torch.Tensor, A: torch.Tensor) -> Factorisation:
    """Thin SVD of ``B @ A`` from the factors (see module docstring), in their dtype.

    Householder QR and the SVD are backward stable, so float32 factors give a float32-accurate
    result (relative error ~1e-7) at half the cost of float64; pass float64 factors for
    reference-grade results.
    """
    import torch

    Qb, Rb = torch.linalg.qr(B)
    Qa, Ra = torch.linalg.qr(A.T)
    # The R × R core is tiny: decompose it in float64 so singular values (energy, auto rank)
    # are as exact as the factors allow.
    U, S, Vh = torch.linalg.svd((Rb.double() @ Ra.double().T), full_matrices=False)
    return Factorisation(U=Qb @ U.to(B.dtype), S=S, V=Qa @ Vh.T.to(A.dtype))
