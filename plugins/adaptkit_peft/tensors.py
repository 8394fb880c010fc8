"""PEFT's tensor names, both ways: which key holds what, and the tensors of an adapter.

PEFT saves, under ``base_model.model.<module>.``:

* ``lora_A.weight`` / ``lora_B.weight`` — a linear target's factors; ``lora_B.bias`` with
  ``lora_bias=True``;
* ``lora_embedding_A`` / ``lora_embedding_B`` — an embedding LoRA's factors, transposed
  (:mod:`adaptkit.api` ``LoraPair`` keeps them in the table's layout);
* ``lora_magnitude_vector`` — a DoRA target's magnitude (``use_dora``);
* ``base_layer.<param>`` — a LoRA target's own base weight (embeddings, ``lm_head``), or its
  trained bias (``bias: "lora_only" | "all"``);
* ``<param>`` — a saved module's tensor (``modules_to_save``, the heads a ``task_type`` adds,
  matched by plain suffix as PEFT does), or a trained bias of a module that is not a target
  (``bias: "all"``);
* ``token_adapter.trainable_tokens_delta`` — an embedding's trained rows
  (``trainable_token_indices``; their values, despite the name).

Anything else is refused, naming the key and what it looks like.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from adaptkit.api import InvalidAdapterError, SavedModule, is_module_path

PREFIX = "base_model.model."
CONFIG_NAME = "adapter_config.json"

_KEY = re.compile(
    r"^base_model\.model\.(?P<module>.+)\."
    r"(?P<name>lora_A\.weight|lora_B\.weight|lora_B\.bias|lora_embedding_A|lora_embedding_B"
    r"|lora_magnitude_vector(?:\.weight)?)$"
)
_TOKENS_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.token_adapter\.trainable_tokens_delta$")
_LINEAR = ("lora_A.weight", "lora_B.weight")
_EMBEDDING = ("lora_embedding_A", "lora_embedding_B")

#: Last module-path components and what PEFT users save them as, for refusal messages.
_SAVED_KINDS = {
    "classifier": "a saved classification head",
    "score": "a saved classification head",
    "qa_outputs": "a saved question-answering head",
    "lm_head": "a saved output head (lm_head)",
    "embed_tokens": "saved input embeddings",
    "wte": "saved input embeddings",
    "embed_out": "a saved output head",
}


@dataclass
class Sorted:
    """A PEFT weights file's tensors, sorted by what they are.

    Attributes:
        factors: ``module -> {PEFT tensor name under the module -> tensor}``.
        saved: ``module -> SavedModule`` (``modules_to_save``, base weights, trained biases).
        tokens: ``module -> rows`` of trainable tokens (their indices are in the config).
        problems: One line per tensor that is none of these.
    """

    factors: dict[str, dict[str, Any]] = field(default_factory=dict)
    saved: dict[str, SavedModule] = field(default_factory=dict)
    tokens: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def sort_tensors(tensors: dict[str, Any], listed: list[str], bias_mode: str) -> Sorted:
    """Sort every tensor of ``adapter_model.safetensors`` (see the module docstring).

    Args:
        tensors: Name -> tensor.
        listed: The saved-module names (``modules_to_save`` plus the task's heads).
        bias_mode: The config's ``bias`` (``"none"``, ``"lora_only"`` or ``"all"``).
    """
    out = Sorted()
    for key, tensor in sorted(tensors.items()):
        m = _KEY.match(key)
        t = _TOKENS_KEY.match(key)
        if t is not None and is_module_path(t["module"]):
            out.tokens[t["module"]] = tensor
        elif m is None:
            problem = _saved_tensor(key, tensor, listed, bias_mode, out.saved)
            if problem:
                out.problems.append(problem)
        elif not is_module_path(m["module"]):
            out.problems.append(f"{key!r}: {m['module']!r} is not a dotted module path")
        else:
            name = "lora_magnitude_vector" if m["name"].startswith("lora_magnitude") else m["name"]
            out.factors.setdefault(m["module"], {})[name] = tensor
    return out


def _saved_tensor(
    key: str, tensor: Any, listed: list[str], bias_mode: str, saved: dict[str, SavedModule]
) -> str | None:
    """File a non-LoRA tensor as a saved module's parameter; a problem message if it is none."""
    if not key.startswith(PREFIX):
        return f"{key}: matches no LoRA key pattern (PEFT keys start with {PREFIX!r})"
    module, _, param = key[len(PREFIX) :].rpartition(".")
    if not is_module_path(module) or not param.isidentifier():
        return f"{key!r}: {module!r} is not a dotted module path"
    trained_bias = param == "bias" and bias_mode in ("all", "lora_only")
    if module.endswith(".base_layer"):
        origin = "bias" if trained_bias else "base_layer"
        return _file(saved, module.removesuffix(".base_layer"), param, tensor, origin, key)
    if any(module.endswith(name) for name in listed):  # PEFT's own rule: a plain suffix
        return _file(saved, module, param, tensor, "modules_to_save", key)
    if trained_bias:
        return _file(saved, module, param, tensor, "bias", key)
    kind = _SAVED_KINDS.get(module.rpartition(".")[2], "a whole saved module")
    return (
        f"{key}: a full tensor of {module!r} ({kind}), but {CONFIG_NAME} does not list it in "
        "modules_to_save (nor does its task_type add it); add the module's name there if it was "
        "trained whole"
    )


def _file(
    saved: dict[str, SavedModule], module: str, param: str, tensor: Any, origin: str, key: str
) -> str | None:
    entry = saved.setdefault(module, SavedModule(params={}, origin=origin))
    if entry.origin != origin:
        return f"{key}: {module!r} is saved both as {entry.origin} and as {origin}; one module, one kind"
    entry.params[param] = tensor
    return None


def build_pair(
    module: str, found: dict[str, Any], rank: int, alpha: float, rslora: bool, *, experts: bool = False
) -> Any:
    """The :class:`LoraPair` of one target from its PEFT tensors (``found``: name -> tensor);
    with ``experts``, the packed factors of a ``target_parameters`` wrapper
    (:mod:`adaptkit_peft.experts`).

    Raises:
        InvalidAdapterError: a factor without its pair, both kinds of factors, a rank that
            disagrees with the config, or a malformed pair (naming the PEFT key).
    """
    from adaptkit.api import LoraPair

    where = f"{PREFIX}{module}"
    embedding = any(n in found for n in _EMBEDDING)
    names = _EMBEDDING if embedding else _LINEAR
    if embedding and any(n in found for n in (*_LINEAR, "lora_B.bias")):
        raise InvalidAdapterError(f"{where}: holds both lora_A/B and lora_embedding_A/B factors")
    missing = [n for n in names if n not in found]
    if missing:
        raise InvalidAdapterError(f"{where}.{missing[0]}: missing (its pair is present)")
    A, B = found[names[0]], found[names[1]]
    if experts:
        from adaptkit_peft.experts import stacked

        A, B = stacked(A, B, rank, where)
    elif A.ndim != 2 or A.shape[0] != rank:
        raise InvalidAdapterError(
            f"{where}.{names[0]}: shape {tuple(A.shape)} disagrees with rank {rank} from {CONFIG_NAME}"
        )
    if embedding and B.ndim == 2:
        # PEFT's ΔE = s·(B_peft @ A_peft)ᵀ: in the table's layout A = B_peftᵀ, B = A_peftᵀ.
        A, B = B.T.contiguous(), A.T.contiguous()
    try:
        pair = LoraPair(
            A=A,
            B=B,
            alpha=alpha,
            scaling="alpha/sqrt(r)" if rslora else "alpha/r",
            kind="experts" if experts else "embedding" if embedding else "linear",
            bias=found.get("lora_B.bias"),
            magnitude=found.get("lora_magnitude_vector"),
        )
    except InvalidAdapterError as exc:
        raise InvalidAdapterError(f"{where}: {exc.message}") from None
    bad = pair.check_finite()
    if bad:
        raise InvalidAdapterError(f"{where}.{_peft_name(bad[0], pair)}: contains NaN or Inf values")
    return pair


def _peft_name(label: str, pair: Any) -> str:
    """PEFT's name for the tensor :meth:`LoraPair.tensors` calls ``label``."""
    if pair.kind == "embedding":
        return {"lora_A.weight": "lora_embedding_B", "lora_B.weight": "lora_embedding_A"}.get(label, label)
    return label


def peft_tensors(adapter: Any) -> dict[str, Any]:
    """Every tensor of ``adapter`` under PEFT's key (the inverse of :func:`sort_tensors` and
    :func:`build_pair`). Where any target has a LoRA bias, PEFT gives every ``lora_B`` one
    (``lora_bias`` is global), so the others get a zero bias: the same update."""
    import torch

    from adaptkit_peft.experts import factor_modules, packed

    lora_bias = any(p.bias is not None for p in adapter.targets.values())
    nested = factor_modules([t for t, p in adapter.targets.items() if p.kind == "experts"])
    tensors = {}
    for name, pair in sorted(adapter.targets.items()):
        if pair.kind == "experts":
            A, B = packed(pair)
            tensors[f"{PREFIX}{nested[name]}.lora_A.weight"] = A
            tensors[f"{PREFIX}{nested[name]}.lora_B.weight"] = B
            continue
        A, B = pair.A.detach().cpu(), pair.B.detach().cpu()
        if pair.magnitude is not None:
            tensors[f"{PREFIX}{name}.lora_magnitude_vector"] = pair.magnitude.detach().contiguous().cpu()
        if pair.kind == "embedding":
            tensors[f"{PREFIX}{name}.lora_embedding_A"] = B.T.contiguous()
            tensors[f"{PREFIX}{name}.lora_embedding_B"] = A.T.contiguous()
            continue
        tensors[f"{PREFIX}{name}.lora_A.weight"] = A.contiguous()
        tensors[f"{PREFIX}{name}.lora_B.weight"] = B.contiguous()
        if lora_bias:
            bias = pair.bias if pair.bias is not None else torch.zeros(pair.out_features, dtype=B.dtype)
            tensors[f"{PREFIX}{name}.lora_B.bias"] = bias.detach().contiguous().cpu()
    for module, entry in sorted(adapter.tokens.items()):
        tensors[f"{PREFIX}{module}.token_adapter.trainable_tokens_delta"] = (
            entry.values.detach().contiguous().cpu()
        )
    for module, entry in sorted(adapter.saved.items()):
        # PEFT names a LoRA target's own tensors under base_layer (the module is wrapped).
        wrapped = entry.origin == "base_layer" or (entry.origin == "bias" and module in adapter.targets)
        infix = ".base_layer" if wrapped else ""
        for param, tensor in sorted(entry.params.items()):
            tensors[f"{PREFIX}{module}{infix}.{param}"] = tensor.detach().contiguous().cpu()
    return tensors


def bias_mode(adapter: Any) -> str:
    """The config's ``bias``: ``"all"`` when a trained bias belongs to a module that is not a
    target, ``"lora_only"`` when every one belongs to a target, else ``"none"``."""
    owners = [m for m, e in adapter.saved.items() if e.origin == "bias"]
    if not owners:
        return "none"
    return "lora_only" if all(m in adapter.targets for m in owners) else "all"


def token_indices(cfg: dict[str, Any], module: str) -> list[int] | None:
    """The token ids of ``module``'s trainable tokens: ``trainable_token_indices`` itself (a list,
    for the input embeddings), or the entry whose name ``module`` ends with (a dict, as PEFT
    matches it)."""
    spec = cfg.get("trainable_token_indices")
    if isinstance(spec, dict):
        return next((list(v) for k, v in spec.items() if module.endswith(k)), None)
    return list(spec) if isinstance(spec, list) else None
