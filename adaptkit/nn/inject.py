"""Attach LoRA layers to any ``nn.Module``; bake, unbake, extract, load or detach them.

Target selection (``targets``):

* a list of names — a module matches if its path equals a name or ends with ``"." + name``
  (PEFT's rule): ``["q_proj", "v_proj"]``;
* ``"re:<regex>"`` — linear layers whose full module path matches the regex;
* ``"all-linear"`` — every ``nn.Linear`` / HF ``Conv1D`` except the output head
  (``get_output_embeddings()`` of a transformers model, else a module named ``lm_head``).

Only ``nn.Linear`` and ``Conv1D`` can be targets; selecting anything else is an error.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from adaptkit.errors import AdaptkitError
from adaptkit.nn.layers import LoraEmbedding, LoraLayer, LoraLinear
from adaptkit.nn.layout import is_adaptable, replace_module
from adaptkit.nn.settings import LoraSettings

if TYPE_CHECKING:
    from adaptkit.adapter import Adapter

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def is_linear_like(module: nn.Module) -> bool:
    """Whether LoRA can target ``module`` (see :mod:`adaptkit.nn.layout`)."""
    return is_adaptable(module)


def _suffix_match(name: str, targets: Sequence[str]) -> bool:
    return any(name == t or name.endswith("." + t) for t in targets)


def output_head_names(model: nn.Module) -> set[str]:
    head = None
    getter = getattr(model, "get_output_embeddings", None)
    if callable(getter):
        try:
            head = getter()
        except (NotImplementedError, AttributeError):
            head = None
    names = {n for n, m in model.named_modules() if head is not None and m is head}
    return names or {n for n, _ in model.named_modules() if n == "lm_head" or n.endswith(".lm_head")}


def select_targets(model: nn.Module, targets: Sequence[str] | str, exclude: Sequence[str] = ()) -> list[str]:
    """Module paths the settings select, checked to be linear layers.

    Raises:
        AdaptkitError: nothing matched (listing some linear layers), or a non-linear match.
    """
    modules = dict(model.named_modules())
    linear = [n for n, m in modules.items() if n and is_linear_like(m) and not isinstance(m, LoraLayer)]
    if isinstance(targets, str) and targets == "all-linear":
        heads = output_head_names(model)
        chosen = [n for n in linear if n not in heads]
    elif isinstance(targets, str) and targets.startswith("re:"):
        try:
            pattern = re.compile(targets[3:])
        except re.error as exc:
            raise AdaptkitError(f"bad target regex {targets[3:]!r}: {exc}", key="targets") from None
        # A regex selects among the linear layers (it may also match their containers).
        chosen = [n for n in linear if pattern.fullmatch(n)]
    else:
        names = [targets] if isinstance(targets, str) else list(targets)
        chosen = [n for n in modules if n and _suffix_match(n, names)]
    chosen = [n for n in chosen if not _suffix_match(n, list(exclude))]
    wrong = [n for n in chosen if not is_linear_like(modules[n])]
    if wrong:
        raise AdaptkitError(
            f"targets must be nn.Linear or Conv1D layers; {wrong[0]!r} is a "
            f"{type(modules[wrong[0]]).__name__}",
            key="targets",
        )
    if not chosen:
        examples = ", ".join(linear[:6]) or "none"
        raise AdaptkitError(
            f"no linear layer matches targets {targets!r}; linear layers include: {examples}",
            key="targets",
        )
    return chosen


def lora_layers(model: nn.Module, kind: type[LoraLayer] = LoraLinear) -> dict[str, Any]:
    """Every attached layer of ``kind`` by the path of the module it wraps: the trainable
    :class:`LoraLinear` layers by default, every kind (mixtures too) with ``LoraLayer``."""
    return {n: m for n, m in model.named_modules() if isinstance(m, kind)}


def refuse_attached(model: nn.Module) -> None:
    """One set of LoRA layers at a time: a second would wrap the first."""
    if lora_layers(model, LoraLayer):
        raise AdaptkitError("the model already has LoRA layers; detach them first")


def attach(model: nn.Module, settings: LoraSettings | None = None) -> list[str]:
    """Wrap the selected layers with :class:`LoraLinear`, freeze everything else.

    Returns:
        The wrapped module paths.
    """
    s = settings or LoraSettings()
    refuse_attached(model)
    if s.dtype not in _DTYPES:
        raise AdaptkitError(f"unknown dtype {s.dtype!r}; valid: {', '.join(_DTYPES)}", key="dtype")
    names = select_targets(model, s.targets, s.exclude)
    for p in model.parameters():
        p.requires_grad_(False)
    for name in names:
        base = model.get_submodule(name)
        replace_module(
            model,
            name,
            LoraLinear(
                base,
                rank=s.rank,
                alpha=s.alpha,
                dropout=s.dropout,
                rslora=s.rslora,
                dtype=_DTYPES[s.dtype],
                init=s.init,
            ),
        )
    return names


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for layer in lora_layers(model).values() for p in (layer.lora_A, layer.lora_B)]


def bake(model: nn.Module) -> None:
    """Fold every LoRA update into its base weight, ``W ← W + ΔW`` (refuses if any layer is
    baked already)."""
    from adaptkit.nn.baking import untie

    layers = lora_layers(model, LoraLayer)
    baked = [n for n, m in layers.items() if m.baked]
    if baked:
        raise AdaptkitError(f"already baked ({baked[0]}); call unbake() first")
    untie(model, [f"{name}.base.weight" for name in layers])  # a tied head's update is its own
    for layer in layers.values():
        layer.bake()


def unbake(model: nn.Module) -> None:
    """Undo :func:`bake` on every baked layer, restoring ``W`` exactly."""
    for layer in lora_layers(model, LoraLayer).values():
        if layer.baked:
            layer.unbake()


def detach(model: nn.Module, *, bake_first: bool = False) -> None:
    """Put the base layers back, for every kind of LoRA layer (after baking the updates into
    them if ``bake_first``)."""
    from adaptkit.nn.baking import untie

    if bake_first:  # a tied head's update is its own (see adaptkit.nn.tied)
        untie(
            model, [f"{name}.base.weight" for name, m in lora_layers(model, LoraLayer).items() if not m.baked]
        )
    for name, layer in lora_layers(model, LoraLayer).items():
        if bake_first and not layer.baked:
            layer.bake()
        elif not bake_first and layer.baked:
            layer.unbake()
        replace_module(model, name, layer.base)


def extract(
    model: nn.Module, *, base_name: str | None = None, provenance: dict[str, Any] | None = None
) -> Adapter:
    """The attached LoRA factors as an :class:`~adaptkit.adapter.Adapter` (native format)."""
    from adaptkit.adapter import Adapter, BaseModelInfo, Producer

    layers = lora_layers(model)
    if not layers:
        raise AdaptkitError("the model has no LoRA layers to extract")
    conv1d = any(layer.conv1d for layer in layers.values())
    return Adapter(
        targets={name: layer.export_pair() for name, layer in sorted(layers.items())},
        base_model=BaseModelInfo(name=base_name, fan_in_fan_out=True if conv1d else None),
        producer=Producer(component="backend:lora"),
        provenance=dict(provenance or {}),
    )


def load(
    model: nn.Module, adapter: Adapter, *, trainable: bool = False, dtype: str | None = None
) -> list[str]:
    """Attach ``adapter``'s factors to ``model`` (for inference, or to continue training).

    Each target gets its own rank and scale; explicit scales become ``alpha = s·r``. The
    adapter's saved modules (PEFT ``modules_to_save``) replace the base parameters they name,
    as PEFT does on loading; :func:`detach` does not restore those.
    """
    from adaptkit.nn.baking import apply_saved_modules, resolve_saved, resolve_targets

    refuse_attached(model)
    experts = sorted(t for t, p in adapter.targets.items() if p.kind == "experts")
    if experts:
        raise AdaptkitError(
            f"{experts[0]} is an experts target (LoRA on a 3-D parameter); it can be baked "
            "(bake_adapter, export --merged) but not attached unmerged",
            key=experts[0],
        )
    found = resolve_targets(model, adapter)
    resolve_saved(model, adapter)  # every check before anything changes
    apply_saved_modules(model, adapter)
    for p in model.parameters():
        p.requires_grad_(False)
    for name in found:
        pair = adapter.targets[name]
        rslora = pair.scaling == "alpha/sqrt(r)"
        alpha = pair.alpha if pair.scaling != "explicit" else pair.scale * pair.rank
        torch_dtype = _DTYPES[dtype] if dtype else pair.A.dtype
        kind = LoraEmbedding if pair.kind == "embedding" else LoraLinear
        layer = kind(model.get_submodule(name), rank=pair.rank, alpha=alpha, rslora=rslora, dtype=torch_dtype)
        with torch.no_grad():
            layer.lora_A.copy_(pair.A)
            layer.lora_B.copy_(pair.B)
        if pair.bias is not None:
            layer.lora_bias = nn.Parameter(pair.bias.to(torch_dtype), requires_grad=trainable)
        if pair.magnitude is not None:
            layer.lora_magnitude = nn.Parameter(pair.magnitude.to(torch_dtype), requires_grad=trainable)
        layer.lora_A.requires_grad_(trainable)
        layer.lora_B.requires_grad_(trainable)
        replace_module(model, name, layer)
    return sorted(found)
