"""LoRA on experts' parameters (PEFT's ``target_parameters``): PEFT's keys and packing, both ways.

PEFT wraps each targeted parameter of a module (``mlp.experts.gate_up_proj``, a 3-D
``(experts, ·, ·)`` tensor) in a ``ParamWrapper``. Several parameters of one module are nested:
the module's first matching parameter (in the order the module registers them) is wrapped
first, so it ends up innermost, and its factors are saved under the most ``.base_layer``
segments::

    base_model.model.<module>.base_layer.lora_A.weight   # gate_up_proj (registered first)
    base_model.model.<module>.lora_A.weight              # down_proj (registered last)

PEFT packs the experts' factors into one ``lora_A: (r·E, in)`` (expert ``e`` in rows
``e·r … e·r + r``) and one ``lora_B: (out, r·E)`` (expert ``e`` in columns ``j·E + e``);
adaptkit stacks them, ``A: (E, r, in)`` and ``B: (E, out, r)``.

The registration order is the model class's, which an adapter folder does not name. Every
expert module transformers ships registers ``gate_up_proj`` before ``down_proj`` (and
``gate_proj``/``up_proj`` before ``down_proj``); several targeted parameters of one module are
read in that order, and names outside it are refused rather than guessed. Baking then checks
every expert target against the parameter's shape, so a swapped pair could not go unnoticed.
"""

from __future__ import annotations

from typing import Any

from adaptkit.api import AdaptkitError

#: How transformers' expert modules order their parameters (registration order).
PARAM_ORDER = ("gate_up_proj", "gate_proj", "up_proj", "down_proj")


def _holder_params(holder: str, target_parameters: list[str]) -> list[str]:
    """The parameter names of module ``holder`` that ``target_parameters`` selects (PEFT matches
    ``f"{module}.{param}"`` equal to an entry or ending with ``"." + entry``)."""
    names = []
    for entry in target_parameters:
        module, _, param = entry.rpartition(".")
        if param not in names and (not module or holder == module or holder.endswith("." + module)):
            names.append(param)
    return names


def _ordered(holder: str, params: list[str], path: Any) -> list[str]:
    """``params`` in the holder's registration order (see the module docstring)."""
    if len(params) < 2:
        return params
    unknown = [p for p in params if p not in PARAM_ORDER]
    if unknown:
        raise AdaptkitError(
            f"target_parameters selects {sorted(params)} on {holder!r}; PEFT nests them in the "
            "module's own parameter order, which adaptkit knows only for transformers' expert "
            f"modules ({', '.join(PARAM_ORDER)}), not for {unknown[0]!r}",
            path=path,
            key="target_parameters",
        )
    return sorted(params, key=PARAM_ORDER.index)


def expert_targets(modules: list[str], cfg: dict[str, Any], path: Any) -> dict[str, str]:
    """``PEFT factor module -> parameter path`` for the factors ``target_parameters`` put there
    (``…experts.base_layer -> …experts.gate_up_proj``); other modules are not in it.

    Raises:
        AdaptkitError: nesting that does not match the parameters the config selects.
    """
    target_parameters = list(cfg.get("target_parameters") or [])
    if not target_parameters:
        return {}
    depths: dict[str, dict[int, str]] = {}
    for module in modules:
        holder, depth = module, 0
        while holder.endswith(".base_layer"):
            holder, depth = holder.removesuffix(".base_layer"), depth + 1
        if _holder_params(holder, target_parameters):
            depths.setdefault(holder, {})[depth] = module
    out = {}
    for holder, found in depths.items():
        params = _ordered(holder, _holder_params(holder, target_parameters), path)
        if sorted(found) != list(range(len(params))):
            raise AdaptkitError(
                f"{holder!r} holds LoRA factors nested {len(found)} deep, but target_parameters "
                f"selects {len(params)} of its parameters ({', '.join(params)})",
                path=path,
                key="target_parameters",
            )
        for depth, module in found.items():
            out[module] = f"{holder}.{params[len(params) - 1 - depth]}"  # the outermost is the last
    return out


def stacked(A: Any, B: Any, rank: int, key: str) -> tuple[Any, Any]:
    """PEFT's packed ``(r·E, in)`` / ``(out, r·E)`` factors as ``(E, r, in)`` / ``(E, out, r)``."""
    from adaptkit.api import InvalidAdapterError

    if A.ndim != 2 or B.ndim != 2 or A.shape[0] % rank or A.shape[0] != B.shape[1]:
        raise InvalidAdapterError(
            f"{key}: lora_A {tuple(A.shape)} and lora_B {tuple(B.shape)} do not pack rank-{rank} "
            "factors of the same experts"
        )
    experts = A.shape[0] // rank
    return (
        A.reshape(experts, rank, A.shape[1]).contiguous(),
        B.reshape(B.shape[0], rank, experts).permute(2, 0, 1).contiguous(),
    )


def packed(pair: Any) -> tuple[Any, Any]:
    """The inverse of :func:`stacked`: PEFT's ``lora_A`` and ``lora_B`` of an experts target."""
    E, r = pair.experts, pair.rank
    A = pair.A.detach().cpu().reshape(E * r, pair.in_features)
    B = pair.B.detach().cpu().permute(1, 2, 0).reshape(pair.out_features, r * E)
    return A.contiguous(), B.contiguous()


def factor_modules(targets: list[str]) -> dict[str, str]:
    """``parameter path -> PEFT factor module`` for the experts targets ``targets``: nested as
    PEFT nests them (see the module docstring)."""
    holders: dict[str, list[str]] = {}
    for target in targets:
        holder, _, param = target.rpartition(".")
        holders.setdefault(holder, []).append(param)
    out = {}
    for holder, params in holders.items():
        order = _ordered(holder, params, None)
        for i, param in enumerate(order):
            out[f"{holder}.{param}"] = holder + ".base_layer" * (len(order) - 1 - i)
    return out
