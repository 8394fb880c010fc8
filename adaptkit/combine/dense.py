"""Building blocks for merge methods that need the entries of each ``ΔW_i``.

TIES, DARE and magnitude pruning act elementwise on the dense updates, so they cannot stay
factored. This module materialises ``ΔW_i = s_i · B_i A_i`` in float32 *row tile by row
tile* (bounded memory for large layers), applies per-input magnitude trimming, and
re-factorises the merged matrix to a LoRA pair with a (randomised, seeded) SVD, reporting
the exact relative error of that last step.

Memory: one full ``ΔW_i`` at a time for magnitude thresholds, ``N`` row tiles while merging,
and the merged ``m × n`` result.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from adaptkit.rank import RankRequest, rank_for_energy

if TYPE_CHECKING:
    import torch

    from adaptkit.lora import LoraPair

#: Upper bound on the bytes of the ``N`` stacked row tiles handled at once.
TILE_BYTES = 256 << 20


def delta_rows(pair: LoraPair, rows: slice) -> torch.Tensor:
    """Rows ``rows`` of ``ΔW = s · B @ A`` in float32."""
    import torch

    return (pair.B[rows].to(torch.float32) @ pair.A.to(torch.float32)) * pair.scale


def magnitude_threshold(pair: LoraPair, density: float) -> float:
    """The ``|x|`` a value of ``ΔW`` must reach to be among its top ``density`` fraction.

    ``k = floor(density · m · n)`` entries are kept (PEFT's and mergekit's rounding); ties at
    the threshold are all kept. ``k = 0`` keeps nothing (returns ``inf``).
    """
    import torch

    full = delta_rows(pair, slice(None)).abs().flatten()
    k = int(density * full.numel())
    if k <= 0:
        return math.inf
    if k >= full.numel():
        return 0.0
    return float(torch.kthvalue(full, full.numel() - k + 1).values)


def iter_delta_tiles(
    pairs: Sequence[LoraPair], *, trim_density: float | None = None
) -> Iterator[tuple[slice, torch.Tensor]]:
    """Yield ``(rows, tiles)``: row slices of every input's ``ΔW_i`` stacked ``(N, rows, n)``.

    Args:
        pairs: The inputs' updates (weights are *not* applied here).
        trim_density: If given, zero all but each input's top ``trim_density`` fraction of
            entries by magnitude (TIES' "trim" step, magnitude pruning).
    """
    import torch

    m, n = pairs[0].out_features, pairs[0].in_features
    thresholds = None
    if trim_density is not None:
        thresholds = torch.tensor([magnitude_threshold(p, trim_density) for p in pairs], dtype=torch.float32)[
            :, None, None
        ]
    tile = max(1, min(m, TILE_BYTES // max(1, 4 * n * len(pairs))))
    for start in range(0, m, tile):
        rows = slice(start, min(m, start + tile))
        tiles = torch.stack([delta_rows(p, rows) for p in pairs])
        if thresholds is not None:
            tiles = tiles * (tiles.abs() >= thresholds)
        yield rows, tiles


def dense_merge(
    pairs: Sequence[LoraPair],
    transform: Callable[[torch.Tensor, slice], torch.Tensor],
    *,
    trim_density: float | None = None,
) -> torch.Tensor:
    """Merge dense updates tile by tile into an ``m × n`` float32 matrix.

    ``transform(tiles, rows)`` maps the ``(N, len(rows), n)`` stacked (trimmed) tiles to the
    merged rows; see :func:`iter_delta_tiles` for the arguments.
    """
    import torch

    out = torch.empty(pairs[0].out_features, pairs[0].in_features, dtype=torch.float32)
    for rows, tiles in iter_delta_tiles(pairs, trim_density=trim_density):
        out[rows] = transform(tiles, rows)
    return out


def ties_merge(
    tiles: torch.Tensor, weights: torch.Tensor, *, variant: str, sign_method: str, normalize: bool
) -> torch.Tensor:
    """TIES' elect-sign and disjoint-merge steps on ``(N, ...)`` (already trimmed) values.

    ``variant="peft"`` (the paper with unit weights): the sign is elected on the *unweighted*
    values; result = sum of the agreeing weighted values / number of agreeing inputs.
    ``variant="mergekit"``: the sign is elected on the *weighted* values; result = sum of the
    agreeing weighted values / sum of the agreeing inputs' weights (``normalize``).
    Both break a zero vote towards ``+``; zero entries never agree.
    """
    import torch

    w = weights.to(tiles.dtype).reshape(-1, *([1] * (tiles.ndim - 1)))
    weighted = tiles * w
    voters = tiles if variant == "peft" else weighted
    votes = torch.sign(voters).sum(dim=0) if sign_method == "frequency" else voters.sum(dim=0)
    majority = torch.where(votes >= 0, 1.0, -1.0).to(tiles.dtype)
    agree = torch.sign(voters) == majority
    mixed = (weighted * agree).sum(dim=0)
    if variant == "peft":
        return mixed / agree.sum(dim=0).clamp(min=1)
    if normalize:
        divisor = (w * agree).sum(dim=0)
        divisor = torch.where(divisor.abs() < 1e-8, torch.ones_like(divisor), divisor)
        return mixed / divisor
    return mixed


class DareMasks:
    """DARE's random drops (Yu et al. 2024, https://arxiv.org/abs/2311.03099).

    Each input keeps an entry with probability ``density``, drawn tile by tile from its own
    generator (seeded from the run's seed, the target and the input's name), so results are
    reproducible and independent of the inputs' order. Kept entries are rescaled:
    ``"inverse_density"`` multiplies by ``1/density`` (paper, PEFT: unbiased in
    expectation); ``"l1"`` multiplies by ``||ΔW_i||_1 / ||kept||_1`` (mergekit: the L1 norm
    is preserved exactly), which needs a first pass over the same masks.
    """

    def __init__(self, ctx: Any, names: Sequence[str], density: float, rescale: str) -> None:
        self.ctx, self.names, self.density, self.rescale = ctx, list(names), density, rescale
        self.factors: torch.Tensor | None = None

    def _generators(self) -> list[torch.Generator]:
        return [self.ctx.generator("dare", name) for name in self.names]

    def _keep(self, gens: list[torch.Generator], tiles: torch.Tensor) -> torch.Tensor:
        import torch

        return torch.stack(
            [torch.rand(t.shape, generator=g) < self.density for g, t in zip(gens, tiles, strict=True)]
        )

    def prepare(self, pairs: Sequence[LoraPair]) -> None:
        """First pass for ``rescale="l1"``: the per-input L1 ratio."""
        import torch

        if self.rescale != "l1":
            self.factors = torch.full((len(pairs),), 1.0 / self.density)
            return
        gens = self._generators()
        full = torch.zeros(len(pairs), dtype=torch.float64)
        kept = torch.zeros(len(pairs), dtype=torch.float64)
        for _, tiles in iter_delta_tiles(pairs):
            mask = self._keep(gens, tiles)
            full += tiles.abs().sum(dim=(1, 2)).double()
            kept += (tiles * mask).abs().sum(dim=(1, 2)).double()
        self.factors = torch.where(kept > 0, full / kept.clamp(min=1e-300), 0.0).float()

    def start(self) -> None:
        self._gens = self._generators()

    def apply(self, tiles: torch.Tensor) -> torch.Tensor:
        """Drop and rescale one stacked tile (call tiles in order after :meth:`start`)."""
        assert self.factors is not None, "call prepare() first"
        return tiles * self._keep(self._gens, tiles) * self.factors[:, None, None]


@dataclass
class DenseFactors:
    """A dense update re-factorised to rank ``k``: ``B @ A ≈ D``."""

    B: torch.Tensor
    A: torch.Tensor
    energy: float
    relative_error: float


def _frobenius_sq(D: torch.Tensor) -> float:
    return float((D.double() ** 2).sum())


def factorise_dense(
    D: torch.Tensor,
    request: RankRequest,
    default_rank: int,
    generator: torch.Generator,
    *,
    power_iterations: int = 6,
) -> DenseFactors:
    """Best rank-``k`` factors of a dense matrix ``D`` (``m × n``).

    Small matrices use an exact thin SVD. Large ones use seeded randomised subspace
    iteration (Halko, Martinsson & Tropp 2011, Alg. 4.4) with oversampling: ``O(m n q)``
    instead of ``O(m n min(m, n))``. ``rank=auto:E`` grows the sketch until the captured
    energy reaches ``E``. The reported error is measured, not estimated.
    """
    import torch

    m, n = D.shape
    small = min(m, n)
    total = _frobenius_sq(D)
    want = request.k if request.k is not None else default_rank
    q = min(small, max(want + 10, 2 * want) if request.energy is None else max(64, 2 * default_rank))
    while True:
        if q >= small // 2 or small <= 512:
            U, S, Vh = torch.linalg.svd(D.double(), full_matrices=False)
            exact = True
        else:
            U, S, Vh = _randomised_svd(D, q, generator, power_iterations)
            exact = False
        if request.energy is not None:
            captured = torch.cumsum(S.double() ** 2, 0) / (total or 1.0)
            if exact or float(captured[-1]) >= request.energy:
                k = rank_for_energy(S, request.energy) if exact else _first_reaching(captured, request.energy)
                break
            q = min(small, 2 * q)
            continue
        k = min(want, S.numel())
        break
    root = S[:k].sqrt()
    B = (U[:, :k] * root).to(torch.float32).contiguous()
    A = (root[:, None] * Vh[:k]).to(torch.float32).contiguous()
    residual = _frobenius_sq(D - B @ A)
    err = math.sqrt(residual / total) if total else 0.0
    return DenseFactors(B=B, A=A, energy=1.0 - (residual / total if total else 0.0), relative_error=err)


def _first_reaching(captured: torch.Tensor, energy: float) -> int:
    import torch

    idx = int(torch.searchsorted(captured, torch.tensor(energy - 1e-12, dtype=captured.dtype)))
    return max(1, min(idx + 1, captured.numel()))


def _randomised_svd(
    D: torch.Tensor, q: int, generator: torch.Generator, iterations: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    import torch

    _m, n = D.shape
    omega = torch.randn(n, q, generator=generator, dtype=torch.float32)
    Q, _ = torch.linalg.qr(D @ omega)
    for _ in range(iterations):
        Z, _ = torch.linalg.qr(D.T @ Q)
        Q, _ = torch.linalg.qr(D @ Z)
    small = (Q.T @ D).double()
    Ub, S, Vh = torch.linalg.svd(small, full_matrices=False)
    return Q.double() @ Ub, S, Vh
