"""How many singular directions a re-factorised update keeps: a fixed rank or an energy share.

``rank: 16`` keeps 16 directions; ``rank: auto:0.95`` keeps the smallest ``k`` whose
``Σ_{i<k} σ_i²`` reaches 95 % of ``Σ σ_i²`` (``auto`` = ``auto:0.99``). A strategy receives the
request in :attr:`adaptkit.api.MergeContext.rank`, so it lives with the data model, below the
combine engine and the plugin host.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from adaptkit.errors import AdaptkitError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class RankRequest:
    """How many singular directions to keep.

    Attributes:
        k: A fixed rank, or ``None``.
        energy: Keep the smallest rank whose ``Σσ²`` reaches this fraction of the total.
    With neither set, the strategy's default applies.
    """

    k: int | None = None
    energy: float | None = None

    @classmethod
    def parse(cls, value: int | str | None) -> RankRequest:
        """Parse ``None``, ``16``, ``"16"``, ``"auto"`` (= ``auto:0.99``) or ``"auto:0.95"``."""
        if value is None:
            return cls()
        if isinstance(value, bool):
            raise AdaptkitError(f"rank must be an integer or 'auto[:E]', got {value!r}", key="rank")
        if isinstance(value, int):
            if value < 1:
                raise AdaptkitError(f"rank must be >= 1, got {value}", key="rank")
            return cls(k=value)
        text = str(value).strip()
        if text.isdigit():
            return cls.parse(int(text))
        if text == "auto":
            return cls(energy=0.99)
        if text.startswith("auto:"):
            try:
                energy = float(text[5:])
            except ValueError:
                energy = math.nan
            if not 0.0 < energy <= 1.0:
                raise AdaptkitError(
                    f"energy in {text!r} must be a number in (0, 1]",
                    key="rank",
                    hint="e.g. --rank auto:0.95",
                )
            return cls(energy=energy)
        raise AdaptkitError(f"rank must be an integer or 'auto[:E]', got {value!r}", key="rank")

    def describe(self) -> str:
        if self.k is not None:
            return str(self.k)
        if self.energy is not None:
            return f"auto:{self.energy:g}"
        return "default"

    def choose(self, singular_values: torch.Tensor, default: int) -> int:
        """The rank to keep given all (descending) singular values of the update."""
        if self.k is not None:
            return min(self.k, max(int(singular_values.numel()), 1))
        if self.energy is not None:
            return rank_for_energy(singular_values, self.energy)
        return min(default, max(int(singular_values.numel()), 1))


def rank_for_energy(singular_values: torch.Tensor, energy: float) -> int:
    """Smallest ``k`` with ``Σ_{i<k} σ_i² >= energy · Σ σ_i²`` (at least 1)."""
    import torch

    sq = singular_values.double() ** 2
    total = float(sq.sum())
    if total == 0.0:
        return 1
    cum = torch.cumsum(sq, 0) / total
    # Tolerance so that energy=1.0 stops at the numerical rank instead of at rounding noise.
    k = int(torch.searchsorted(cum, torch.tensor(energy - 1e-12, dtype=cum.dtype)).item()) + 1
    return max(1, min(k, int(sq.numel())))
