"""Experts' parameters: where an experts target's update lands, in a model and in a checkpoint.

A mixture-of-experts layer in transformers 5 holds its experts' weights as 3-D parameters
(``mlp.experts.gate_up_proj``, ``mlp.experts.down_proj``: ``(E, ·, ·)``). An experts target
(:mod:`adaptkit.lora`, PEFT's ``target_parameters``) carries one LoRA per expert,
``ΔW[e] = s · B[e] @ A[e]`` (``out × in`` as PEFT counts them), and the parameter takes it as
PEFT adds it:

* ``P[e] += ΔW[e]`` when the module stores ``(E, out, in)`` (Qwen3-MoE, Mixtral, OLMoE, Llama 4,
  and every expert module without ``is_transposed``);
* ``P[e] += ΔW[e]ᵀ`` when it says ``is_transposed = True`` (gpt-oss: ``(E, in, out)``).

In a checkpoint the parameter may be stored as it is (gpt-oss, Llama 4) or unfused, one tensor per
expert and projection, which transformers stacks (and concatenates) when it loads
(``mlp.experts.3.gate_proj.weight`` and ``…up_proj.weight`` → ``gate_up_proj[3]``). Baking then
adds each expert's rows of ``ΔW[e]`` to the tensor they come from, read off transformers' own
conversion rules; a conversion other than stacking (and concatenating) is refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from adaptkit.errors import InvalidAdapterError


@dataclass
class ExpertSlice:
    """Where (part of) an experts target's update goes in a checkpoint.

    Attributes:
        tensor: The checkpoint tensor.
        transposed: The parameter is ``(E, in, out)`` (``is_transposed``): add ``ΔW[e]ᵀ``.
        expert: ``None``: the tensor is the whole parameter; else the one expert it holds.
        rows: For one expert's tensor, the rows of ``ΔW[e]`` it takes (a concatenated part).
    """

    tensor: str
    transposed: bool
    expert: int | None = None
    rows: tuple[int, int] | None = None


def expert_parameters(model: Any) -> dict[str, tuple[tuple[int, ...], bool]]:
    """``parameter path -> (shape, is_transposed)`` of every 3-D parameter of ``model``."""
    out = {}
    for name, module in model.named_modules():
        for param, tensor in module.named_parameters(recurse=False):
            if tensor.ndim == 3:
                path = f"{name}.{param}" if name else param
                out[path] = (tuple(tensor.shape), bool(getattr(module, "is_transposed", False)))
    return out


def expected_shape(pair: Any, transposed: bool) -> tuple[int, int, int]:
    """The parameter shape an experts pair fits: ``(E, out, in)``, or ``(E, in, out)``."""
    dims = (pair.in_features, pair.out_features) if transposed else (pair.out_features, pair.in_features)
    return (pair.experts, *dims)


def expert_delta(pair: Any, expert: int, dtype: Any) -> Any:
    """``ΔW[e] = s · B[e] @ A[e]`` (``out × in``) in ``dtype``."""
    return (pair.B[expert].to(dtype) @ pair.A[expert].to(dtype)) * pair.scale


def resolve_live(model: Any, targets: dict[str, Any]) -> dict[str, tuple[Any, bool]]:
    """``target -> (parameter, transposed)`` for the experts targets of a live model.

    Raises:
        InvalidAdapterError: a target the model lacks, or of another shape.
    """
    params = expert_parameters(model)
    problems, found = [], {}
    for target, pair in sorted(targets.items()):
        if target not in params:
            problems.append(f"{target}: an experts target, but the model has no 3-D parameter there")
            continue
        shape, transposed = params[target]
        if shape != expected_shape(pair, transposed):
            problems.append(
                f"{target}: adapter fits {expected_shape(pair, transposed)} but the parameter is {shape}"
            )
            continue
        found[target] = (model.get_parameter(target), transposed)
    if problems:
        raise InvalidAdapterError.from_problems(problems)
    return found


def checkpoint_layout(
    targets: dict[str, Any], tensors: dict[str, tuple[str, tuple[int, ...]]], model: Any, canonical: Any
) -> dict[str, list[ExpertSlice]]:
    """Where each experts target's update goes in a checkpoint (see the module docstring).

    Args:
        targets: ``parameter path -> experts LoraPair``.
        tensors: ``checkpoint tensor name -> (safetensors dtype, shape)``.
        model: The model class on the meta device (``None``: unknown, nothing can be placed).
        canonical: Checkpoint name -> module parameter name (the loading renames).

    Raises:
        InvalidAdapterError: a target the model lacks, stored in a way not inverted here, or of
            another shape.
    """
    if not targets:
        return {}
    params = expert_parameters(model) if model is not None else {}
    stored: dict[str, str] = {}
    for name in sorted(tensors):
        stored.setdefault(canonical(name), name)
    unfused = _unfused_sources(model, tensors, canonical) if model is not None else {}
    problems: list[str] = []
    placed: dict[str, list[ExpertSlice]] = {}
    for target, pair in sorted(targets.items()):
        if target not in params:
            problems.append(f"{target}: an experts target, but the model has no 3-D parameter there")
            continue
        shape, transposed = params[target]
        if shape != expected_shape(pair, transposed):
            problems.append(
                f"{target}: adapter fits {expected_shape(pair, transposed)} but the parameter is {shape}"
            )
        elif target in stored:
            name = stored[target]
            placed[target] = [ExpertSlice(name, transposed)]
            if tuple(tensors[name][1]) != shape:
                problems.append(f"{target}: {name} is {tensors[name][1]}, the parameter {shape}")
        elif target in unfused and not transposed:
            placed[target] = unfused[target]
            problems += _unfused_problems(target, unfused[target], shape, tensors)
        else:
            problems.append(
                f"{target}: no checkpoint tensor holds it as is, and transformers builds it from the "
                "checkpoint by a conversion adaptkit does not invert (only stacking experts, and "
                "concatenating their projections)"
            )
    if problems:
        raise InvalidAdapterError.from_problems(problems)
    return placed


def _unfused_sources(model: Any, tensors: dict[str, Any], canonical: Any) -> dict[str, list[ExpertSlice]]:
    """``parameter -> slices`` for parameters transformers builds by stacking per-expert tensors
    (``MergeModulelist``) and concatenating projections (``Concatenate(dim=1)``)."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import Concatenate, MergeModulelist, WeightConverter
    except ImportError:  # transformers 4.x stores experts as modules: nothing to invert
        return {}
    found: dict[str, dict[int, list[tuple[int, str]]]] = {}
    for rule in get_model_conversion_mapping(model):
        if not isinstance(rule, WeightConverter) or len(rule.target_patterns) != 1:
            continue
        ops = rule.operations
        stacks = len(ops) >= 1 and isinstance(ops[0], MergeModulelist) and ops[0].dim == 0
        joins = len(ops) == 1 or (len(ops) == 2 and isinstance(ops[1], Concatenate) and ops[1].dim == 1)
        if not (stacks and joins):
            continue
        for j, source in enumerate(rule.source_patterns):
            pattern = re.compile(re.escape(source).replace(r"\*", r"(\d+)") + "$")
            for name in tensors:
                m = pattern.search(name)
                if m is not None:
                    target = canonical(name[: m.start()] + rule.target_patterns[0])
                    found.setdefault(target, {}).setdefault(int(m.group(1)), []).append((j, name))
    out: dict[str, list[ExpertSlice]] = {}
    for target, experts in found.items():
        slices = []
        for expert, parts in sorted(experts.items()):
            offset = 0
            for _, name in sorted(parts):  # the projections in the rule's order: gate, then up
                rows = int(tensors[name][1][0])
                slices.append(ExpertSlice(name, False, expert, (offset, offset + rows)))
                offset += rows
        out[target] = slices
    return out


def _unfused_problems(
    target: str, slices: list[ExpertSlice], shape: tuple[int, ...], tensors: dict[str, Any]
) -> list[str]:
    """Why per-expert tensors do not rebuild a ``shape`` parameter (empty when they do)."""
    experts = sorted({s.expert for s in slices})
    if experts != list(range(shape[0])):
        return [f"{target}: the checkpoint holds experts {experts[:3]}…, the parameter {shape[0]}"]
    rows = {e: 0 for e in experts}
    for s in slices:
        rows[s.expert] = max(rows[s.expert], s.rows[1] if s.rows else 0)
        if tuple(tensors[s.tensor][1])[1:] != shape[2:]:
            return [f"{target}: {s.tensor} is {tensors[s.tensor][1]}, not rows of a {shape} parameter"]
    if set(rows.values()) != {shape[1]}:
        return [
            f"{target}: the per-expert tensors stack to {sorted(set(rows.values()))} rows, not {shape[1]}"
        ]
    return []
