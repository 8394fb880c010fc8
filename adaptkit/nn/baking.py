"""Bake an adapter into a PyTorch model's weights: ``W ← W + c·ΔW`` per target.

Works on any ``nn.Module`` whose targets are ``nn.Linear`` (weight ``out × in``) or Hugging
Face ``Conv1D`` (weight ``in × out``, as in GPT-2: the delta is transposed). The delta is
computed in float32 (float64 for float64 weights) and cast once to the weight's dtype; a
result that overflows that dtype (e.g. fp16) is refused before any weight is touched.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from adaptkit.errors import AdaptkitError, InvalidAdapterError
from adaptkit.nn.layout import weight_layout

if TYPE_CHECKING:
    import torch

    from adaptkit.adapter import Adapter


#: Why a LoRA bias cannot be baked into a layer without a bias (the model class builds none).
NO_BIAS = (
    "the adapter has a LoRA bias (lora_bias) but the base layer has no bias to add it to "
    "(the model class builds it without one, and PEFT cannot merge it either); use the adapter "
    "unmerged, or a base whose layer has a bias"
)


def resolve_targets(model: torch.nn.Module, adapter: Adapter) -> dict[str, tuple[Any, str]]:
    """Map each target to ``(module, layout)``, checking it exists and its shape fits.

    Raises:
        InvalidAdapterError: listing every target missing from the model, of an unsupported
            module type, or with a shape that does not match.
    """
    modules = dict(model.named_modules())
    problems: list[str] = []
    found: dict[str, tuple[Any, str]] = {}
    targets = {t: p for t, p in adapter.targets.items() if p.kind != "experts"}  # parameters, not modules
    missing = sorted(t for t in targets if t not in modules)
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        problems.append(f"targets not in the model: {shown}")
    for name, pair in sorted(targets.items()):
        if name not in modules:
            continue
        module = modules[name]
        layout = weight_layout(module)
        if layout is None:
            problems.append(f"{name}: a {type(module).__name__}, not nn.Linear, Conv1D or nn.Embedding")
            continue
        if (layout == "embedding") != (pair.kind == "embedding"):
            what = "an embedding LoRA" if pair.kind == "embedding" else "a linear layer's update"
            problems.append(f"{name}: {what}, but the model's module is a {type(module).__name__}")
            continue
        # nn.Linear says its sizes (a bitsandbytes Linear4bit's packed weight has no meaningful
        # shape); Conv1D stores its weight in × out; an embedding table is num × dim.
        if layout == "linear":
            out_f, in_f = module.out_features, module.in_features
        else:
            out_f, in_f = module.weight.shape[::-1] if layout == "conv1d" else module.weight.shape
        if (out_f, in_f) != (pair.out_features, pair.in_features):
            problems.append(
                f"{name}: adapter is {pair.out_features}×{pair.in_features} (out×in) but the "
                f"model's layer is {out_f}×{in_f}"
            )
            continue
        if pair.bias is not None and getattr(module, "bias", None) is None:
            problems.append(f"{name}: {NO_BIAS}")
            continue
        found[name] = (module, layout)
    if problems:
        raise InvalidAdapterError.from_problems(problems)
    return found


def resolve_saved(model: torch.nn.Module, adapter: Adapter) -> list[tuple[Any, Any]]:
    """``(model parameter, replacement tensor)`` for every saved-module tensor of ``adapter``.

    Raises:
        InvalidAdapterError: listing every saved module the model lacks or whose parameter has
            another shape.
    """
    modules = dict(model.named_modules())
    problems, pairs = [], []
    for module, entry in sorted(adapter.saved.items()):
        owner = modules.get(module)
        for param, tensor in sorted(entry.params.items()):
            target = getattr(owner, param, None) if owner is not None else None
            if target is None or not hasattr(target, "shape"):
                problems.append(f"{module}.{param}: saved in full by the adapter, but the model lacks it")
            elif tuple(target.shape) != tuple(tensor.shape):
                have, want = tuple(tensor.shape), tuple(target.shape)
                problems.append(f"{module}.{param}: saved tensor is {have} but the model's is {want}")
            else:
                pairs.append((target, tensor))
    if problems:
        raise InvalidAdapterError.from_problems(problems)
    return pairs


def resolve_tokens(model: torch.nn.Module, adapter: Adapter) -> list[tuple[Any, Any]]:
    """``(table parameter, TrainableTokens)`` for each of the adapter's trainable tokens.

    Raises:
        InvalidAdapterError: a table the model lacks, a token id past its rows, rows of
            another width.
    """
    from adaptkit.nn.tensor_edits import token_rows_problems

    modules = dict(model.named_modules())
    problems, found = [], []
    for module, rows in sorted(adapter.tokens.items()):
        table = getattr(modules.get(module), "weight", None)
        if table is None:
            problems.append(f"{module}.trainable_tokens: the model has no {module}.weight to replace rows of")
            continue
        bad = token_rows_problems(module, rows, tuple(table.shape))
        problems += bad
        if not bad:
            found.append((table, rows))
    if problems:
        raise InvalidAdapterError.from_problems(problems)
    return found


def _apply_rows(found: list[tuple[Any, Any]]) -> None:
    """Replace the token rows in place. On a tied model the table is the head's weight too, so
    the head's rows follow, as PEFT ties the two token adapters."""
    import torch

    from adaptkit.nn.tensor_edits import replace_rows

    with torch.no_grad():
        for table, rows in found:
            table.copy_(replace_rows(table, rows))


def work_dtype(dtype: Any) -> Any:
    """The dtype ``W + ΔW`` is computed in for weights of ``dtype``: float64 for float64,
    float32 otherwise (a 16-bit sum would round ``ΔW`` before it reaches ``W``)."""
    import torch

    return torch.float64 if dtype == torch.float64 else torch.float32


def target_delta(pair: Any, W: torch.Tensor, *, conv1d: bool, weight: float = 1.0) -> torch.Tensor:
    """``weight·ΔW`` of ``pair`` in ``W``'s layout (``in × out`` for Conv1D) and work dtype."""
    delta = pair.delta(work_dtype(W.dtype)) * weight
    return delta.mT if conv1d else delta  # the last two dims: an experts target's (E, out, in) too


def add_delta(
    W: torch.Tensor, delta: torch.Tensor, *, key: str | None = None, dtype: Any = None
) -> torch.Tensor:
    """``W + ΔW``, computed in ``delta``'s dtype and returned in ``dtype`` (default ``W``'s):
    the one place every bake (modules, LoRA layers, streamed checkpoints) adds an update.

    Raises:
        AdaptkitError: the result is not finite in ``W``'s dtype (an fp16 overflow, say);
            callers change nothing then.
    """
    return finite_as(W.to(delta.dtype) + delta.to(W.device), dtype or W.dtype, key=key)


def finite_as(new: torch.Tensor, dtype: Any, *, key: str | None = None) -> torch.Tensor:
    """``new`` cast to ``dtype``, checked finite there.

    Raises:
        AdaptkitError: a non-finite value (an fp16 overflow, say); callers change nothing then.
    """
    import torch

    out = new.to(dtype)
    if not bool(torch.isfinite(out).all()):
        raise AdaptkitError(
            f"W + ΔW overflows {dtype} (non-finite values); nothing was changed",
            key=key,
            hint="bake in float32 or scale the adapter down",
        )
    return out


def untie(model: torch.nn.Module, names: list[str]) -> list[str]:
    """Give each parameter named in ``names`` that another module shares (a head tied to the
    embeddings) a copy of its own, so changing it leaves the other module alone — what the
    adapter computes unmerged (see :mod:`adaptkit.nn.tied`). The model's config stops tying them
    (``tie_word_embeddings = False``), so saving or re-tying keeps them apart.

    Returns:
        The names that were untied.
    """
    import torch

    holders: dict[int, int] = {}
    for _, module in model.named_modules(remove_duplicate=False):
        for param in module._parameters.values():
            if param is not None:
                holders[id(param)] = holders.get(id(param), 0) + 1
    untied = []
    for name in names:
        owner_name, _, attr = name.rpartition(".")
        owner = model.get_submodule(owner_name)
        param = owner._parameters.get(attr)
        if param is None or holders.get(id(param), 0) < 2:
            continue
        holders[id(param)] -= 1
        setattr(owner, attr, torch.nn.Parameter(param.detach().clone(), requires_grad=param.requires_grad))
        untied.append(name)
    config = getattr(model, "config", None)
    if untied and getattr(config, "tie_word_embeddings", None):
        config.tie_word_embeddings = False
    return untied


def _changed_names(model: torch.nn.Module, adapter: Adapter) -> list[str]:
    """Every ``module.param`` baking ``adapter`` changes (target weights, saved parameters)."""
    modules = dict(model.named_modules())
    names = [f"{t}.weight" for t, p in adapter.targets.items() if t in modules and p.kind != "experts"]
    return names + [f"{m}.{p}" for m, e in adapter.saved.items() if m in modules for p in e.params]


def apply_saved_modules(model: torch.nn.Module, adapter: Adapter) -> int:
    """Replace the model's parameters with the adapter's saved modules (PEFT ``modules_to_save``)
    and the rows of its trainable tokens; returns how many tensors were replaced. Not undone by
    unmerging or detaching. A replaced parameter the model shares with another module (a tied
    head) is untied first; token rows go to both (see :mod:`adaptkit.nn.tied`)."""
    import torch

    resolve_saved(model, adapter)
    _apply_rows(resolve_tokens(model, adapter))
    untie(model, [f"{m}.{p}" for m, e in adapter.saved.items() for p in e.params])
    pairs = resolve_saved(model, adapter)
    with torch.no_grad():
        for param, tensor in pairs:
            param.copy_(tensor.to(param.dtype))
    return len(pairs)


def bake_adapter(model: torch.nn.Module, adapter: Adapter, *, weight: float = 1.0) -> None:
    """``W ← W + weight·ΔW`` for every target, in place (``weight=-1`` undoes it).

    An adapter's saved modules (PEFT ``modules_to_save``) first replace the base parameters
    they name, as PEFT's merge does; they cannot be weighted or undone, so ``weight`` must be 1
    for such an adapter. Nothing is modified unless every target resolves and every baked
    weight is finite in the model's dtype.
    """
    import torch

    from adaptkit.nn.dora import target_weight
    from adaptkit.nn.experts import resolve_live

    if (adapter.saved or adapter.tokens) and weight != 1.0:
        raise AdaptkitError(
            "the adapter saves modules or token rows in full; they replace the base's and cannot "
            f"be baked at weight {weight:g}"
        )
    resolve_saved(model, adapter)
    resolve_targets(model, adapter)
    experts = resolve_live(model, {t: p for t, p in adapter.targets.items() if p.kind == "experts"})
    rows = resolve_tokens(model, adapter)
    # Every check first: from here the model changes. Token rows go first, to both sides of a tie.
    _apply_rows(rows)
    untie(model, _changed_names(model, adapter))
    saved = resolve_saved(model, adapter)
    replaced = {id(param): tensor for param, tensor in saved}
    found = resolve_targets(model, adapter)
    updates = []
    with torch.no_grad():
        for name, (module, layout) in found.items():
            W = module.weight
            start = replaced.get(id(W), W).to(W.dtype)  # a saved base weight replaces W first
            pair, conv1d = adapter.targets[name], layout == "conv1d"
            updates.append((W, target_weight(pair, start, conv1d=conv1d, weight=weight, key=name)))
            db = adapter.targets[name].delta_bias(work_dtype(W.dtype))
            if db is not None:  # Δb = s·b_B, onto the bias (or the trained bias replacing it)
                b = module.bias
                start = replaced.get(id(b), b).to(b.dtype)
                updates.append((b, add_delta(start, db * weight, key=f"{name}.bias")))
        for name, (P, transposed) in experts.items():  # P[e] += ΔW[e] (ᵀ), as PEFT adds it
            updates.append(
                (
                    P,
                    add_delta(
                        P, target_delta(adapter.targets[name], P, conv1d=transposed, weight=weight), key=name
                    ),
                )
            )
        for param, tensor in saved:
            param.copy_(tensor.to(param.dtype))
        for W, new in updates:
            W.copy_(new)
