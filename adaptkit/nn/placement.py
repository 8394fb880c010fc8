"""Where an adapter's targets live in a model directory: module types and checkpoint tensor names.

An adapter names module paths as the model class builds them in PyTorch
(``model.language_model.layers.0.self_attn.q_proj`` in current transformers for Qwen2.5-VL).
The checkpoint on disk may store that module's weight under another name
(``model.layers.0.self_attn.q_proj.weight`` as transformers saves it,
``language_model.model.layers.…`` from older releases, ``backbone.…`` for Nemotron-H), and
transformers maps checkpoint names to module names with per-model renaming rules when it loads.

:func:`target_layout` answers both questions the way the model class itself does: it builds
the model's skeleton on the ``meta`` device (no weights, no memory, never remote code) from the
directory's ``config.json``, reads each target's real module type (``nn.Linear`` — update
``out × in`` — or HF ``Conv1D`` — stored ``in × out``, so the update is transposed), and maps
both checkpoint tensor names and adapter target names through the class's own loading renames
(``transformers.conversion_mapping``). A config flag such as PEFT's ``fan_in_fan_out`` is never
trusted to decide the layout.

When transformers cannot build the skeleton (a model type it does not know), the layout falls
back to what the tensor shapes prove: a non-square weight of shape ``out × in`` is a Linear,
``in × out`` a Conv1D; a square weight is ambiguous and refused.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adaptkit.errors import InvalidAdapterError

#: safetensors dtypes a LoRA update can be added to without rounding it away.
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")


@dataclass
class TargetPlacement:
    """Where one target's update goes.

    Attributes:
        tensor: The checkpoint tensor holding the module's weight.
        conv1d: The module is an HF ``Conv1D`` (weight ``in × out``): add ``ΔWᵀ``.
        source: For a weight the checkpoint does not store because the model ties it to another
            (an output head tied to the embeddings), that tensor's name: baking writes
            ``tensor`` as a tensor of its own, starting from ``source`` (see
            :mod:`adaptkit.nn.tied`).
    """

    tensor: str
    conv1d: bool
    source: str | None = None


@dataclass
class ModelSkeleton:
    """A model class's module types and its checkpoint-to-module name mapping."""

    architecture: str
    modules: dict[str, str]  # module path -> "linear" | "conv1d" | the class name
    canonical: Callable[[str], str]  # checkpoint or legacy parameter name -> current name


def meta_model(folder: Path) -> Any:
    """The model class of ``folder/config.json`` built on the meta device (no weights, no
    memory), or ``None`` when transformers does not know it. Nothing is downloaded and no
    remote code runs.

    Raises:
        FormatError: transformers knows the ``model_type`` but rejects the config
            (``rope_scaling: "abc"``, ``hidden_act: "nonexistent"``): naming ``config.json``
            and transformers' reason, never a guess from tensor shapes.
    """
    import torch
    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    from transformers.utils import logging as hf_logging

    from adaptkit.errors import FormatError
    from adaptkit.io.jsonio import read_json_file
    from adaptkit.io.model_config import MAX_CONFIG_BYTES

    raw = read_json_file(folder / "config.json", what="config.json", max_bytes=MAX_CONFIG_BYTES)
    known = raw.get("model_type") in CONFIG_MAPPING_NAMES
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        config = transformers.AutoConfig.from_pretrained(
            folder, local_files_only=True, trust_remote_code=False
        )
        names = list(getattr(config, "architectures", None) or [])
        cls = next((getattr(transformers, n) for n in names if hasattr(transformers, n)), None)
        if cls is None:
            cls = transformers.AutoModelForCausalLM._model_mapping[type(config)]
        with torch.device("meta"):
            return cls._from_config(config)
    except (MemoryError, RecursionError):
        raise
    except Exception as exc:  # unknown here: callers fall back to what shapes prove
        if not known:
            return None
        why = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise FormatError(f"transformers rejects it: {why}", path=folder / "config.json") from None
    finally:
        hf_logging.set_verbosity(verbosity)


def build_skeleton(folder: Path, model: Any = True) -> ModelSkeleton | None:
    """Module types and the checkpoint-name mapping of ``folder``'s model class (see
    :func:`meta_model`; ``model``: one already built), or ``None`` when transformers does not
    know it."""
    model = meta_model(folder) if model is True else model
    if model is None:
        return None
    modules = {name: _kind(module) for name, module in model.named_modules() if name}
    return ModelSkeleton(
        architecture=type(model).__name__, modules=modules, canonical=checkpoint_renamer(model)
    )


def check_weights_match(folder: Path, tensors: dict[str, tuple[str, tuple[int, ...]]], model: Any) -> None:
    """Refuse a checkpoint that does not hold exactly what its ``config.json`` builds, as
    transformers' own loader would report it: a tensor the model needs and the checkpoint lacks,
    one it has no place for, or one of another shape. Tied weights (``lm_head.weight`` sharing
    the embeddings) and non-persistent buffers are not stored and not asked for.

    Args:
        folder: The model folder.
        tensors: ``checkpoint tensor name -> (safetensors dtype, shape)``.
        model: Its :func:`meta_model` (``None``: a model type transformers does not know, so
            nothing to compare against).

    Raises:
        FormatError: naming the folder and the first such tensor.
    """
    from adaptkit.io.models import weights_mismatch

    if model is None or getattr(model.config, "quantization_config", None) is not None:
        return  # no skeleton, or packed weights whose shapes are not the module's
    try:  # conversions other than renames (fused experts) are transformers' to judge
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightRenaming

        if any(not isinstance(t, WeightRenaming) for t in get_model_conversion_mapping(model)):
            return
    except ImportError:
        pass
    rename = checkpoint_renamer(model)
    state = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    tied = set(getattr(model, "all_tied_weights_keys", None) or ())
    found: dict[str, tuple[int, ...]] = {}
    unexpected, mismatched = [], []
    for name, (_, shape) in sorted(tensors.items()):
        key = rename(name)
        if key not in state:
            unexpected.append(name)
            continue
        found[key] = tuple(shape)
        if tuple(shape) != state[key]:
            mismatched.append(
                f"{name} ({'×'.join(map(str, shape))}, config.json builds {'×'.join(map(str, state[key]))})"
            )
    missing = [k for k in sorted(state) if k not in found and k not in tied]
    # A tied weight may be stored in place of its source: either one of the pair suffices.
    missing = [k for k in missing if not any(k == src and tgt in found for tgt, src in _pairs(model))]
    for kind, keys in (
        ("lacks", missing),
        ("holds a tensor the model has no place for:", unexpected),
        ("holds a tensor of another shape than config.json gives:", mismatched),
    ):
        if keys:
            raise weights_mismatch(folder, kind, keys)


def _pairs(model: Any) -> list[tuple[str, str]]:
    return list((getattr(model, "all_tied_weights_keys", None) or {}).items())


def _kind(module: Any) -> str:
    from adaptkit.nn.layout import weight_layout

    return weight_layout(module) or type(module).__name__


def checkpoint_renamer(model: Any) -> Callable[[str], str]:
    """Checkpoint name -> module parameter name, with the rules ``from_pretrained`` applies."""
    try:  # transformers >= 5
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightRenaming, apply_renamings

        renamings = [t for t in get_model_conversion_mapping(model) if isinstance(t, WeightRenaming)]
        return lambda name: apply_renamings(name, renamings) if renamings else name
    except ImportError:  # transformers 4.x: a regex -> replacement dict on the class
        rules = list((getattr(model, "_checkpoint_conversion_mapping", None) or {}).items())

        def rename(name: str) -> str:
            for pattern, replacement in rules:
                new, n = re.subn(pattern, replacement, name)
                if n:
                    return new
            return name

        return rename


def target_layout(
    targets: dict[str, tuple[int, int]],
    tensors: dict[str, tuple[str, tuple[int, ...]]],
    folder: Path,
    *,
    skeleton: ModelSkeleton | bool | None = True,
    tied: dict[str, str] | None = None,
    embeddings: frozenset[str] | set[str] = frozenset(),
) -> dict[str, TargetPlacement]:
    """Place every target, or refuse listing every problem.

    Args:
        targets: ``module path -> (out_features, in_features)`` of each update.
        tensors: ``checkpoint tensor name -> (safetensors dtype, shape)``.
        folder: The model directory (its ``config.json`` names the model class).
        skeleton: A prebuilt skeleton, ``None`` to use shapes only, or ``True`` to build one.
        tied: ``module parameter -> checkpoint tensor`` of weights the checkpoint leaves out
            because they are tied to that tensor (:func:`adaptkit.nn.tied.tied_missing`): a
            target there is placed with its ``source``.
        embeddings: The targets that are embedding LoRAs (``kind="embedding"``): each must be
            an ``nn.Embedding``, and every other target a linear layer.

    Raises:
        InvalidAdapterError: targets missing from the model or checkpoint, of a module type
            that is not Linear/Conv1D (or Embedding, for an embedding LoRA), with a mismatching
            shape, a non-float weight, two targets resolving to one tensor, or a square weight
            whose layout cannot be proven.
    """
    skel = build_skeleton(folder) if skeleton is True else skeleton or None
    if skel is not None:
        by_module: dict[str, str] = {}
        for name in sorted(tensors):
            by_module.setdefault(skel.canonical(name), name)
    problems: list[str] = []
    missing: list[str] = []
    placed: dict[str, TargetPlacement] = {}
    claimed: dict[str, str] = {}
    for target, (out_f, in_f) in sorted(targets.items()):
        if skel is not None:
            module = skel.canonical(f"{target}.weight")[: -len(".weight")]
            kind = skel.modules.get(module)
            if kind is None:
                missing.append(target)
                continue
            if kind not in ("linear", "conv1d", "embedding"):
                problems.append(f"{target}: a {kind} in {skel.architecture}, not nn.Linear or Conv1D")
                continue
            if (kind == "embedding") != (target in embeddings):
                what = "an embedding LoRA" if target in embeddings else "a linear layer's update"
                problems.append(
                    f"{target}: {what}, but it is a{'n' * (kind[0] in 'aeiou')} {kind} in {skel.architecture}"
                )
                continue
            name = by_module.get(f"{module}.weight")
            source = (tied or {}).get(f"{module}.weight") if name is None else None
            if source is not None:  # stored as the tensor it is tied to; shape and dtype are its
                name = f"{module}.weight"
                tensors = {**tensors, name: tensors[source]}
            if name is None:
                problems.append(
                    f"{target}: no checkpoint tensor loads into {module}.weight ({skel.architecture} builds "
                    "this weight by converting several tensors, or the checkpoint lacks it)"
                )
                continue
            conv1d = kind == "conv1d"
        else:
            source = None
            name = next((c for c in _fallback_names(target) if c in tensors), None)
            if name is None:
                missing.append(target)
                continue
            shape = tuple(tensors[name][1])
            if shape == (out_f, in_f) and out_f == in_f and target not in embeddings:
                problems.append(
                    f"{target}: cannot tell whether {name} is stored out×in (nn.Linear) or in×out "
                    "(Conv1D): transformers does not know this model type and the weight is square"
                )
                continue
            conv1d = shape == (in_f, out_f) and target not in embeddings  # a table is never transposed
        dtype, shape = tensors[name][0], tuple(tensors[name][1])
        want = (in_f, out_f) if conv1d else (out_f, in_f)
        if shape != want:
            problems.append(
                f"{target}: adapter is {out_f}×{in_f} (out×in) but {name} is {'×'.join(map(str, shape))}"
                + (" (Conv1D, stored in×out)" if conv1d else "")
            )
            continue
        if dtype not in FLOAT_DTYPES:
            problems.append(
                f"{target}: {name} is {dtype}, not a float weight; adding ΔW to it would round the "
                "update away (bake into the unquantized model instead)"
            )
            continue
        if name in claimed:
            problems.append(f"{target}: resolves to {name}, as {claimed[name]} does: ambiguous targets")
            continue
        claimed[name] = target
        placed[target] = TargetPlacement(tensor=name, conv1d=conv1d, source=source)
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        where = f" (no such modules in {skel.architecture})" if skel is not None else ""
        problems.insert(0, f"targets not in the model: {shown}{where}")
    if problems:
        raise InvalidAdapterError.from_problems(problems)
    return placed


def parameter_layout(
    params: dict[str, tuple[int, ...]],
    tensors: dict[str, tuple[str, tuple[int, ...]]],
    skeleton: ModelSkeleton | None,
    tied: dict[str, str] | None = None,
) -> dict[str, str]:
    """Checkpoint tensor name of each module parameter a saved module replaces.

    Args:
        params: ``"<module>.<param>" -> shape`` of the replacement tensors.
        tensors: ``checkpoint tensor name -> (safetensors dtype, shape)``.
        skeleton: From :func:`build_skeleton` (``None``: names are matched as they are, or
            without their first component).
        tied: As for :func:`target_layout`: a parameter the checkpoint leaves out because it is
            tied to another tensor is placed under its own name (baking then writes it).

    Raises:
        InvalidAdapterError: a parameter the checkpoint lacks, or of another shape.
    """
    by_module: dict[str, str] = {}
    if skeleton is not None:
        for name in sorted(tensors):
            by_module.setdefault(skeleton.canonical(name), name)
    problems: list[str] = []
    placed: dict[str, str] = {}
    for param, shape in sorted(params.items()):
        if skeleton is not None:
            name = by_module.get(skeleton.canonical(param))
            if name is None and param in (tied or {}):
                name, tensors = param, {**tensors, param: tensors[(tied or {})[param]]}
        else:
            name = next((c for c in (param, param.split(".", 1)[-1]) if c in tensors), None)
        if name is None:
            problems.append(
                f"{param}: the adapter saves this module in full, but the base checkpoint has no such "
                "tensor to replace (save the base with that module first, e.g. with its "
                "classification head)"
            )
            continue
        dtype, have = tensors[name][0], tuple(tensors[name][1])
        if have != tuple(shape):
            sizes = "×".join(map(str, shape)), "×".join(map(str, have))
            problems.append(f"{param}: saved tensor is {sizes[0]} but {name} is {sizes[1]}")
        elif dtype not in FLOAT_DTYPES:
            problems.append(f"{param}: {name} is {dtype}, not a float tensor")
        else:
            placed[param] = name
    if problems:
        raise InvalidAdapterError.from_problems(problems)
    return placed


def bias_layout(
    targets: list[str], tensors: dict[str, tuple[str, tuple[int, ...]]], skeleton: ModelSkeleton | None
) -> dict[str, str]:
    """Checkpoint tensor name of each target's bias (for a LoRA bias ``Δb = s·b_B``).

    Raises:
        InvalidAdapterError: listing every target whose layer stores no bias.
    """
    from adaptkit.nn.baking import NO_BIAS

    by_module: dict[str, str] = {}
    if skeleton is not None:
        for name in sorted(tensors):
            by_module.setdefault(skeleton.canonical(name), name)
    placed, problems = {}, []
    for target in sorted(targets):
        if skeleton is not None:
            name = by_module.get(skeleton.canonical(f"{target}.bias"))
        else:
            name = next(
                (c for c in (f"{target}.bias", f"{target}.bias".split(".", 1)[-1]) if c in tensors), None
            )
        if name is None or tensors[name][0] not in FLOAT_DTYPES:
            problems.append(f"{target}: {NO_BIAS}")
        else:
            placed[target] = name
    if problems:
        raise InvalidAdapterError.from_problems(problems)
    return placed


def _fallback_names(target: str) -> list[str]:
    names = [f"{target}.weight"]
    if "." in target:
        names.append(f"{target.split('.', 1)[1]}.weight")
    return names
