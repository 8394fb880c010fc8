"""An adapter: LoRA updates for many target modules plus who made it, for what, and how."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

from adaptkit.errors import InvalidAdapterError
from adaptkit.lora import LoraPair

#: Version of the native format written by this release (the ``format_version`` manifest key).
FORMAT_VERSION = 1

# Module paths as PyTorch names them: dot-separated, no empty segment, no whitespace/slashes.
_MODULE_PATH = re.compile(r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*$")
_PARAM_NAME = re.compile(r"^[A-Za-z0-9_]+$")


def is_module_path(name: object) -> bool:
    """A dotted module path as PyTorch names modules (``model.layers.0.q_proj``): no empty
    segment, no slash, space or control character."""
    return isinstance(name, str) and bool(_MODULE_PATH.fullmatch(name))


#: Where a saved module came from (kept so formats can write it back the way they read it).
SAVED_ORIGINS = ("modules_to_save", "base_layer", "bias")


@dataclass
class BaseModelInfo:
    """Identity of the base model an adapter was made for.

    Args:
        name: A Hugging Face id or local name (``base_model_name_or_path`` in PEFT).
        revision: A commit/revision of that model, when known.
        fan_in_fan_out: The targets are HF ``Conv1D`` layers (weight stored ``in × out``, as
            in GPT-2). Factors are always kept in ``nn.Linear`` layout; this flag only says how
            to merge into such a base and is written back to PEFT's config.
    """

    name: str | None = None
    revision: str | None = None
    fan_in_fan_out: bool | None = None


@dataclass
class Producer:
    """What produced the adapter: adaptkit's version and the component (format, backend,
    strategy) that made it."""

    name: str = "adaptkit"
    version: str | None = None
    component: str | None = None


@dataclass
class SavedModule:
    """A whole module's trained parameters, stored in full (PEFT's ``modules_to_save``: a
    classification head, a retrained ``lm_head`` or ``embed_tokens``).

    Applying the adapter *replaces* the base module's parameters with these tensors; a LoRA
    update on the same module (if it is also a target) is added on top.

    Args:
        params: ``parameter name -> tensor`` (``{"weight": ..., "bias": ...}``), in the
            module's own layout and dtype.
        origin: ``"modules_to_save"`` (PEFT saved the module whole), ``"base_layer"`` (PEFT
            saved the base weight of a LoRA target such as ``lm_head``, as it does when
            embedding layers are targeted) or ``"bias"`` (the module's bias was trained, PEFT's
            ``bias: "lora_only" | "all"``; ``params`` is ``{"bias": ...}``).
    """

    params: dict[str, Any]
    origin: str = "modules_to_save"


@dataclass
class TrainableTokens:
    """Rows of an embedding table trained in full (PEFT's ``trainable_token_indices``): applying
    the adapter *replaces* those rows, ``E[indices] ← values``.

    PEFT keeps the rows' new values (under the misleading name ``trainable_tokens_delta``), not a
    change. On a model whose head is tied to the embeddings, the head's rows follow (PEFT ties
    the two token adapters), so the tie is kept.

    Args:
        indices: The token ids (rows), distinct, in PEFT's order.
        values: ``(len(indices), dim)``: the rows' values, in the table's dtype.
    """

    indices: list[int]
    values: Any


@dataclass
class Adapter:
    """LoRA updates keyed by module path (PEFT naming without ``base_model.model.``).

    Args:
        targets: ``module path -> LoraPair``, e.g. ``"model.layers.0.self_attn.q_proj"``.
        base_model: Which base model the adapter belongs to.
        producer: Which adaptkit component produced it.
        provenance: Free-form JSON record of how it was made (recipe, input hashes, seeds,
            library versions).
        format_version: Native format version; :data:`FORMAT_VERSION` for new adapters.
        saved: ``module path -> SavedModule``: modules stored in full, which replace the base
            model's (see :class:`SavedModule`).
        tokens: ``module path -> TrainableTokens``: embedding rows trained in full, which
            replace the base's (see :class:`TrainableTokens`).
    """

    targets: dict[str, LoraPair]
    base_model: BaseModelInfo = field(default_factory=BaseModelInfo)
    producer: Producer = field(default_factory=Producer)
    provenance: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    saved: dict[str, SavedModule] = field(default_factory=dict)
    tokens: dict[str, TrainableTokens] = field(default_factory=dict)

    def problems(self, *, check_values: bool = True) -> list[str]:
        """Every problem with this adapter as ``target: message`` (empty when valid).

        Args:
            check_values: Also scan every factor for NaN/Inf.
        """
        problems = []
        if not self.targets:
            problems.append("adapter has no targets")
        for name, pair in self.targets.items():
            if not isinstance(name, str) or not _MODULE_PATH.fullmatch(name):
                problems.append(f"{name!r}: not a valid module path")
                continue
            if not isinstance(pair, LoraPair):
                problems.append(f"{name}: expected a LoraPair, got {type(pair).__name__}")
                continue
            problems += [f"{name}: {p}" for p in pair.structure_problems()]
            if check_values:
                problems += [f"{name}.{label}: contains NaN or Inf values" for label in pair.check_finite()]
        problems += saved_module_problems(self.saved, check_values=check_values)
        problems += token_problems(self.tokens, check_values=check_values)
        problems += [
            f"{m}: saved as a base_layer weight, but it is not a LoRA target"
            for m, e in self.saved.items()
            if isinstance(e, SavedModule) and e.origin == "base_layer" and m not in self.targets
        ]
        return problems

    def validate(self, *, check_values: bool = True) -> None:
        """Raise :class:`InvalidAdapterError` listing every problem."""
        problems = self.problems(check_values=check_values)
        if problems:
            raise InvalidAdapterError.from_problems(problems)

    @property
    def ranks(self) -> dict[str, int]:
        return {name: pair.rank for name, pair in self.targets.items()}

    def num_params(self) -> int:
        return sum(pair.num_params() for pair in self.targets.values())

    def __repr__(self) -> str:
        ranks = sorted(set(self.ranks.values()))
        return f"Adapter({len(self.targets)} targets, ranks={ranks}, base_model={self.base_model.name!r})"


def saved_module_problems(saved: dict[str, SavedModule], *, check_values: bool) -> list[str]:
    import torch

    problems = []
    for module, entry in saved.items():
        if not isinstance(module, str) or not _MODULE_PATH.fullmatch(module):
            problems.append(f"{module!r}: not a valid module path (saved module)")
            continue
        if not isinstance(entry, SavedModule) or entry.origin not in SAVED_ORIGINS:
            problems.append(f"{module}: a saved module must be a SavedModule with origin in {SAVED_ORIGINS}")
            continue
        if not entry.params:
            problems.append(f"{module}: saved module has no parameters")
        if entry.origin == "bias" and set(entry.params) - {"bias"}:
            problems.append(f"{module}: a trained bias (origin 'bias') saves only the parameter 'bias'")
        for param, tensor in entry.params.items():
            where = f"{module}.{param}"
            if not isinstance(param, str) or not _PARAM_NAME.fullmatch(param):
                problems.append(f"{module}: {param!r} is not a parameter name (saved module)")
            elif not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
                problems.append(f"{where}: a saved module's tensors must be float tensors")
            elif tensor.numel() == 0:
                problems.append(f"{where}: zero-size tensor {tuple(tensor.shape)} (saved module)")
            elif check_values and not bool(torch.isfinite(tensor).all()):
                problems.append(f"{where}: contains NaN or Inf values (saved module)")
    return problems


def token_problems(tokens: dict[str, TrainableTokens], *, check_values: bool) -> list[str]:
    """Every problem of an adapter's trainable tokens (see :class:`TrainableTokens`)."""
    import torch

    problems = []
    for module, entry in tokens.items():
        where = f"{module}.trainable_tokens"
        if not isinstance(module, str) or not _MODULE_PATH.fullmatch(module):
            problems.append(f"{module!r}: not a valid module path (trainable tokens)")
            continue
        if not isinstance(entry, TrainableTokens):
            problems.append(f"{module}: trainable tokens must be a TrainableTokens")
            continue
        indices, values = entry.indices, entry.values
        if not indices or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in indices):
            problems.append(f"{where}: indices must be a non-empty list of token ids (integers >= 0)")
        elif len(set(indices)) != len(indices):
            problems.append(f"{where}: indices repeat a token id")
        if not isinstance(values, torch.Tensor) or not values.is_floating_point() or values.ndim != 2:
            problems.append(f"{where}: values must be a 2-D float tensor (tokens × dim)")
        elif values.shape[0] != len(indices) or values.shape[1] < 1:
            problems.append(f"{where}: values are {tuple(values.shape)} for {len(indices)} token ids")
        elif check_values and not bool(torch.isfinite(values).all()):
            problems.append(f"{where}: contains NaN or Inf values")
    return problems


@dataclass
class WeightedAdapter:
    """An adapter as an input: to ``combine``, to ``combine --tune`` or to an exporter.

    Attributes:
        adapter: The adapter.
        weight: Its multiplier ``w_i`` (negative subtracts it; 0 leaves it out).
        name: Label for reports, seeds and ``.onnx_adapter`` files; ``combine`` defaults it to
            ``adapter<i>``.
        source: The file or folder it was read from (hashed into the provenance).
        reads: Every file read to build it (its manifest YAML, a recipe and its inputs): the
            output guard keeps outputs away from all of them.
    """

    adapter: Adapter
    weight: float = 1.0
    name: str = ""
    source: os.PathLike[str] | None = None
    reads: tuple[os.PathLike[str], ...] = ()
