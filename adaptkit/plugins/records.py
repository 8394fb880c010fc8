"""The records that cross the plugin boundary: what the host hands a plugin and takes back.

A strategy receives :class:`MergeInput` records and a :class:`MergeContext` for each target and
returns a :class:`MergeResult`; an exporter receives an :class:`ExportRequest` and returns its
report. They live with
the contracts (:mod:`adaptkit.plugins.contracts`) rather than with the engines that fill them, so
the contracts, the engines and third-party plugins all import them from below.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adaptkit.errors import AdaptkitError
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


@dataclass(frozen=True)
class ExportRequest:
    """What the export host hands :meth:`Exporter.export`: every input resolved and checked.

    The host (``adaptkit export``, :mod:`adaptkit.exporting`) has already chosen the exporter,
    checked the options against its ``options_schema``, checked the output path, loaded the
    adapters (a recipe combined as ``adaptkit combine`` would, ``tune:`` included) and vetted
    the model folder. The exporter writes its files into ``out_dir`` and returns its report; the
    host writes ``export-report.json`` and publishes ``out_dir`` as ``output`` atomically.

    Attributes:
        model: The model as the user named it (a folder or a Hub id), for reports.
        model_dir: That model as a vetted local folder: every file inside it, safetensors
            weights that match its config, no remote code.
        adapters: The adapters in the order given (may be empty: export the base). Each is a
            :class:`~adaptkit.adapter.WeightedAdapter` with a distinct ``name``; exporters that
            bake one update in use their exact weighted sum (``adaptkit.api.export.combined``).
        output: The folder the user asked for. For messages only: never write here.
        out_dir: The empty folder to write into, beside ``output``; removed if the export fails.
        options: The exporter's options, checked against its ``options_schema``, every default
            filled in.
        given: The keys of ``options`` the user set; the rest are defaults. An exporter uses it to
            refuse an option the path it takes would ignore (:meth:`refuse_unused`).
        flags: How the user spells each option (``"verify" -> "--no-verify"``), for messages.
    """

    model: str
    model_dir: Path
    adapters: list[WeightedAdapter]
    output: Path
    out_dir: Path
    options: Mapping[str, Any] = field(default_factory=dict)
    given: frozenset[str] = frozenset()
    flags: Mapping[str, str] = field(default_factory=dict)

    def flag(self, key: str) -> str:
        """The user's name for option ``key`` (its flag; ``--KEY`` when the host gave none)."""
        return self.flags.get(key) or "--" + key.replace("_", "-")

    def refuse_unused(self, unused: Mapping[str, str], where: str) -> None:
        """Refuse the first option in ``unused`` (``key -> why it does nothing``) the user gave.

        Call it once the path is known (graph, precision, verification) and before any work: an
        option that would be silently ignored is an error naming its flag, so nobody believes an
        option took effect when it did not. Defaults are never refused.

        Raises:
            AdaptkitError: ``--FLAG does nothing for WHERE: WHY``.
        """
        for key, why in unused.items():
            if key in self.given:
                flag = self.flag(key)
                raise AdaptkitError(f"{flag} does nothing for {where}: {why}", hint=f"leave {flag} out")
