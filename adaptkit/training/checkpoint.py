"""Resumable checkpoints without pickle.

A checkpoint is a folder written atomically:

* ``adapter.safetensors`` — the current LoRA factors (native format);
* ``optimizer.safetensors`` — every tensor of the optimizer state (``state.<i>.<name>``) and
  the RNG state (``rng.torch``);
* ``state.json`` — the step, the optimizer's param groups and non-tensor state.

``torch.save`` would pickle, and adaptkit never loads pickles — so the optimizer state is
flattened into named tensors plus JSON, and rebuilt on resume.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from adaptkit.errors import AdaptkitError, FormatError

#: Optimizer scalars and param groups only (tensors live in optimizer.safetensors).
MAX_STATE_BYTES = 64 << 20


def _flatten(opt_state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors as ``state.<i>.<key>`` (nested dicts, as bitsandbytes' optimizers keep, join
    their keys with ``/``); everything else goes to JSON."""
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, dict[str, Any]] = {}

    def walk(idx: Any, key: str, value: Any) -> None:
        if isinstance(value, torch.Tensor):
            tensors[f"state.{idx}.{key}"] = value.detach().contiguous().cpu()
        elif isinstance(value, dict):
            for sub, item in value.items():
                walk(idx, f"{key}/{sub}", item)
        else:
            plain.setdefault(str(idx), {})[key] = value

    for idx, entries in opt_state["state"].items():
        for key, value in entries.items():
            walk(idx, key, value)
    return tensors, {"param_groups": opt_state["param_groups"], "plain_state": plain}


def _nest(entries: dict[str, Any]) -> dict[str, Any]:
    """Undo the ``/`` joining of :func:`_flatten` for one parameter's state."""
    out: dict[str, Any] = {}
    for key, value in entries.items():
        *parents, leaf = key.split("/")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def save_checkpoint(
    folder: Path,
    *,
    adapter: Any,
    optimizer: torch.optim.Optimizer,
    step: int,
    extra: dict[str, Any],
    overwrite: bool = False,
    state: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint folder atomically.

    Args:
        state: ``optimizer``'s state dict with every tensor whole, when the caller gathered it
            (a sharded run gathers it on every process together; see
            :func:`adaptkit.training.sharded.whole_optimizer_state`). ``None``: read it here.
    """
    from safetensors.torch import save_file

    from adaptkit.io.atomic import atomic_directory
    from adaptkit.io.native import save_adapter

    tensors, meta = _flatten(state if state is not None else optimizer.state_dict())
    tensors["rng.torch"] = torch.get_rng_state()
    folder.parent.mkdir(parents=True, exist_ok=True)
    with atomic_directory(folder, overwrite=overwrite) as tmp:
        save_adapter(adapter, tmp / "adapter.safetensors")
        save_file(tensors, tmp / "optimizer.safetensors")
        (tmp / "state.json").write_text(json.dumps({"step": step, **meta, **extra}, indent=1, default=list))
    return folder


def load_checkpoint(folder: Path) -> tuple[Any, dict[str, torch.Tensor], dict[str, Any]]:
    """``(adapter, optimizer tensors, state)`` from a checkpoint folder."""
    from adaptkit.io.jsonio import read_json_file
    from adaptkit.io.native import load_adapter
    from adaptkit.io.safetensors_strict import read_tensors

    folder = Path(folder)
    for name in ("adapter.safetensors", "optimizer.safetensors", "state.json"):
        if not (folder / name).is_file():
            raise FormatError(f"not a checkpoint folder: {name} is missing", path=folder)
    adapter = load_adapter(folder / "adapter.safetensors")
    _, tensors = read_tensors(folder / "optimizer.safetensors", float_only=False)
    state = read_json_file(folder / "state.json", what="checkpoint state.json", max_bytes=MAX_STATE_BYTES)
    step = state.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 1:
        raise FormatError(
            f"step must be a positive integer, not {step!r}", path=folder / "state.json", key="step"
        )
    if not isinstance(state.get("param_groups"), list) or not isinstance(state.get("plain_state", {}), dict):
        raise FormatError("param_groups/plain_state are malformed", path=folder / "state.json")
    return adapter, tensors, state


def restore_optimizer(
    optimizer: torch.optim.Optimizer,
    tensors: dict[str, torch.Tensor],
    state: dict[str, Any],
    *,
    folder: Path,
) -> None:
    """Load a checkpoint's optimizer and RNG state into ``optimizer``, after checking all of it
    against the state this run's optimizer creates
    (:func:`adaptkit.training.resume.check_optimizer_state`): nothing edited is trained on.

    Raises:
        FormatError: naming the file and the group, parameter or tensor.
    """
    from adaptkit.training.resume import check_optimizer_state, reference_state

    groups = check_optimizer_state(reference_state(optimizer), tensors, state, Path(folder))
    rebuilt: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("state."):
            _, idx, name = key.split(".", 2)
            rebuilt.setdefault(int(idx), {})[name] = value
    for idx, entries in state.get("plain_state", {}).items():
        rebuilt.setdefault(int(idx), {}).update(entries)
    rebuilt = {idx: _nest(entries) for idx, entries in rebuilt.items()}
    # A sharded parameter's state is loaded as its rows, laid out like the parameter.
    from adaptkit.training.sharded import like_param

    params = [p for group in optimizer.param_groups for p in group["params"]]
    rebuilt = {
        idx: {k: like_param(v, params[idx]) if idx < len(params) else v for k, v in entries.items()}
        for idx, entries in rebuilt.items()
    }
    try:
        optimizer.load_state_dict({"state": rebuilt, "param_groups": groups})
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise AdaptkitError(
            f"checkpoint does not match this run's optimizer: {exc}", path=Path(folder) / "state.json"
        ) from None
    torch.set_rng_state(tensors["rng.torch"])
