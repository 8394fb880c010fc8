"""The records that cross the plugin boundary: what the host hands a plugin and takes back.

A strategy receives :class:`MergeInput` records and a :class:`MergeContext` for each target and
returns a :class:`MergeResult`; an exporter receives an :class:`ExportRequest`. They live with
the contracts (:mod:`adaptkit.plugins.contracts`) rather than with the engines that fill them, so
the contracts, the engines and third-party plugins all import them from below.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adaptkit.rank import RankRequest

if TYPE_CHECKING:
    import torch

    from adaptkit.adapter import WeightedAdapter
    from adaptkit.lora import LoraPair


@dataclass(frozen=True)
class MergeInput:
    """One adapter's update for the target being merged.

    Attributes:
        name: The adapter's label (unique within a combine call).
        weight: The user's multiplier ``w_i`` (never 0 here).
        pair: Its factors and scale ``s_i``; the strategy applies ``w_i`` itself.
        index: Position of the adapter in the combine call.
    """

    name: str
    weight: float
    pair: LoraPair
    index: int


@dataclass
class MergeContext:
    """Everything about the call that is not the inputs.

    Attributes:
        target: Module path being merged.
        params: Strategy parameters, validated against ``params_schema`` with defaults filled.
        rank: The requested output rank.
        seed: The run's seed; use :meth:`generator` for randomness.
    """

    target: str
    params: Mapping[str, Any] = field(default_factory=dict)
    rank: RankRequest = field(default_factory=RankRequest)
    seed: int = 0

    def generator(self, *key: object) -> torch.Generator:
        """A generator seeded from ``(seed, target, *key)``: reproducible across runs and
        independent of the order targets are processed in."""
        import torch

        text = "\x1f".join(map(str, (self.seed, self.target, *key)))
        digest = hashlib.sha256(text.encode()).digest()
        return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


@dataclass
class MergeResult:
    """A strategy's output for one target.

    Attributes:
        pair: The merged update.
        energy: Fraction of the merged ``||ΔW||_F²`` kept by the final factorisation
            (1.0 when exact).
        relative_error: ``||ΔW − B A||_F / ||ΔW||_F`` of that factorisation.
        note: Anything the user should know (e.g. a fallback taken).
    """

    pair: LoraPair
    energy: float = 1.0
    relative_error: float = 0.0
    note: str | None = None


@dataclass
class ExportRequest:
    """Arguments of :meth:`Exporter.export`.

    Attributes:
        model: Hugging Face model directory or Hub id.
        adapters: The adapters (may be empty: export the base).
        output: Output folder (written atomically; an existing one only with ``force``).
        force: Replace an existing output.
        options: Exporter options (``opset``, ``dtype``, ``atol``, ``verify``, ...).
    """

    model: str
    adapters: list[WeightedAdapter]
    output: Path
    force: bool = False
    options: dict[str, Any] = field(default_factory=dict)
