"""The records that cross the plugin boundary: what the host hands a plugin and takes back.

A strategy receives :class:`MergeInput` records and a :class:`MergeContext` for each target and
returns a :class:`MergeResult`; an exporter receives an :class:`ExportRequest` and returns its
report; a runtime receives a :class:`GenerateRequest` and returns the tokens. They live with
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


@dataclass(frozen=True)
class GenerateRequest:
    """What ``adaptkit generate`` hands a runtime, every flag checked.

    The host has checked the flags on their own (ids are ASCII integers, the temperature is 0
    or in ``[0.01, 100]``, ``--top-p`` in ``(0, 1]``, sampling flags only with sampling, one of
    ``prompt`` and ``input_ids``); the runtime checks them against the model
    (:meth:`check_ids`) and refuses what it cannot honour (:meth:`refuse`).

    Attributes:
        model: MODEL as the user gave it (a path or a Hub id); the runtime's ``accepts`` chose it.
        adapters: The ``-a`` values as given; what they may be is the runtime's to say.
        prompt: Text to encode, or ``None`` when ``input_ids`` is given.
        input_ids: The prompt as token ids (``--input-ids``): the tokenizer must not be loaded,
            and the result's ``text`` is ``None``.
        max_new_tokens: At most this many new tokens (fewer at an end-of-sequence token).
        temperature: 0 for greedy decoding; otherwise sample with ``top_p`` and ``seed``.
        top_p: Nucleus sampling's probability mass, in ``(0, 1]``.
        seed: The sampler's seed, ``0 ≤ seed < 2**31``.
        adapter_name: ``--adapter-name``, or ``None``.
        device: ``cpu`` or ``cuda``.
    """

    model: str
    adapters: tuple[str, ...] = ()
    prompt: str | None = None
    input_ids: tuple[int, ...] | None = None
    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    adapter_name: str | None = None
    device: str = "cpu"

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def check_ids(self, ids: list[int], vocab: int, context: int | None) -> None:
        """Refuse a prompt the model cannot take: empty, an id outside ``[0, vocab)``, or
        ``len(ids) + max_new_tokens`` beyond ``context`` (``None``: no limit known)."""
        where = "--input-ids" if self.input_ids is not None else "--prompt"
        if not ids:
            raise AdaptkitError("the prompt encodes to no tokens", key="--prompt")
        if min(ids) < 0:  # a tokenizer's "unknown" marker (-1), never a token
            raise AdaptkitError(f"token id {min(ids)} is negative", key=where)
        if max(ids) >= vocab:
            raise AdaptkitError(f"token id {max(ids)} is outside the vocabulary (size {vocab})", key=where)
        if context is not None and len(ids) + self.max_new_tokens > context:
            raise AdaptkitError(
                f"{len(ids)} prompt tokens + {self.max_new_tokens} new tokens exceed the model's "
                f"context of {context}",
                key="--max-new-tokens",
            )

    def refuse(self, flag: str, why: str) -> None:
        """Refuse a flag this runtime cannot honour: ``FLAG WHY`` naming the flag."""
        raise AdaptkitError(f"{flag} {why}", key=flag)
