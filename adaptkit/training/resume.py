"""A resume checkpoint is checked against the run that resumes it, never trusted.

A checkpoint's ``state.json`` is a file like any other: edited, truncated, or made by a run
with other settings. Resuming from it must either continue the run it came from, exactly, or
refuse with one line naming what differs. Two stages:

* before the model loads (:func:`check_checkpoint`): the settings the checkpoint records
  (backend, targets, rank, alpha, rsLoRA, LoRA dtype, weight decay, backend options) equal this
  run's; the adapter's ranks and scales agree with them; ``state.json``'s optimizer part has
  the right shape (one parameter per LoRA factor, integer indices, a sane grad-scaler state);
* once the optimizer exists (:func:`check_optimizer_state`): the saved optimizer state is
  compared with the state *this run's optimizer creates* (found by one zero-gradient step
  whose effects are undone): the same param groups with the same hyperparameters, the same
  state entries per parameter with the same tensor shapes and dtypes, finite values, second
  moments non-negative, step counters within the checkpoint's step.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from adaptkit.errors import AdaptkitError, FormatError
from adaptkit.training.settings import MAX_LR, TrainConfig

#: Settings whose change makes a checkpoint's factors or optimizer state meaningless, with the
#: flag that sets each. The learning rate, schedule, batch size and step count may change.
RESUME_SETTINGS = (
    (("backend",), "--backend"),
    (("lora", "targets"), "--targets"),
    (("lora", "exclude"), "--exclude"),
    (("lora", "rank"), "--rank"),
    (("lora", "alpha"), "--alpha"),
    (("lora", "rslora"), "--rslora"),
    (("lora", "dtype"), "--dtype"),
    (("weight_decay",), "weight_decay"),
)
#: Optimizer state entries that are second moments (running means of squares): never negative.
_SQUARES = ("exp_avg_sq", "max_exp_avg_sq", "state2")
#: Top-level ``state.json`` keys a checkpoint has.
_STATE_KEYS = {"step", "param_groups", "plain_state", "config", "grad_scaler"}


def _refuse(message: str, path: Path, key: str | None = None) -> AdaptkitError:
    return FormatError(message, path=path, key=key, hint="resume with the settings it was made with")


def _setting(config: dict[str, Any], where: tuple[str, ...]) -> Any:
    value: Any = config
    for part in where:
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


_MISSING = object()


def _comparable(value: Any) -> Any:
    """Module lists compare as sets (order does not change what is targeted)."""
    if isinstance(value, (list, tuple)):
        return sorted({str(v) for v in value}) if all(isinstance(v, str) for v in value) else list(value)
    return value


def _run_settings(cfg: TrainConfig) -> dict[str, Any]:
    from adaptkit.training.loop import _jsonable

    return _jsonable(cfg)


def check_checkpoint(
    folder: Path,
    adapter: Any,
    tensors: dict[str, Any],
    state: dict[str, Any],
    cfg: TrainConfig,
    fill_options: Any,
) -> None:
    """Everything about a resume checkpoint that needs no model, checked against ``cfg``.

    Args:
        folder: The checkpoint folder (for messages).
        adapter / tensors / state: What :func:`adaptkit.training.checkpoint.load_checkpoint`
            read.
        cfg: This run (backend options already filled).
        fill_options: ``options -> options`` with the backend's defaults filled (the
            checkpoint may predate a default).

    Raises:
        FormatError: naming ``state.json`` (or the adapter) and the setting.
    """
    state_path = folder / "state.json"
    unknown = sorted(set(state) - _STATE_KEYS)
    if unknown:
        raise FormatError(f"unexpected key {unknown[0]!r} in a checkpoint's state.json", path=state_path)
    recorded = state.get("config")
    if not isinstance(recorded, dict) or not isinstance(recorded.get("lora"), dict):
        raise _refuse("the checkpoint does not record the settings it was made with", state_path, "config")
    run = _run_settings(cfg)
    for where, flag in RESUME_SETTINGS:
        saved, wanted = _setting(recorded, where), _setting(run, where)
        if saved is _MISSING:
            raise _refuse(f"the checkpoint does not record {flag}", state_path, "config." + ".".join(where))
        if not _same(_comparable(saved), _comparable(wanted)):
            raise _refuse(
                f"the checkpoint was made with {flag} {saved!r}, this run has {wanted!r}",
                state_path,
                flag,
            )
    saved_options = recorded.get("options", {})
    try:
        saved_options = fill_options(saved_options)
    except AdaptkitError as exc:
        raise _refuse(
            f"recorded backend options are invalid: {exc.message}", state_path, "config.options"
        ) from None
    for key in sorted(set(saved_options) | set(cfg.options)):
        if saved_options.get(key) != cfg.options.get(key):
            raise _refuse(
                f"the checkpoint was made with --option {key}={saved_options.get(key)!r}, this run has "
                f"{cfg.options.get(key)!r}",
                state_path,
                "--option",
            )
    _check_adapter(folder, adapter, cfg)
    _check_state_shape(folder, adapter, tensors, state)


def _check_adapter(folder: Path, adapter: Any, cfg: TrainConfig) -> None:
    """The checkpoint's factors agree with the settings (a ``state.json`` may lie about them)."""
    path = folder / "adapter.safetensors"
    scaling = "alpha/sqrt(r)" if cfg.lora.rslora else "alpha/r"
    for name, pair in adapter.targets.items():
        if pair.rank != cfg.lora.rank:
            raise _refuse(f"factors have rank {pair.rank}, this run has --rank {cfg.lora.rank}", path, name)
        if pair.scaling != scaling or pair.alpha != float(cfg.lora.alpha):
            raise _refuse(
                f"factors are scaled {pair.scaling} with alpha {pair.alpha!r}, this run has {scaling} "
                f"with --alpha {cfg.lora.alpha!r}",
                path,
                name,
            )


def _is_index(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_state_shape(folder: Path, adapter: Any, tensors: dict[str, Any], state: dict[str, Any]) -> None:
    """The optimizer part of a checkpoint has the structure every trainer run writes."""
    state_path = folder / "state.json"
    groups = state["param_groups"]
    indices: list[int] = []
    for n, group in enumerate(groups):
        if not isinstance(group, dict) or not isinstance(group.get("params"), list):
            raise FormatError(
                "must be an object with a 'params' list", path=state_path, key=f"param_groups[{n}]"
            )
        if not all(_is_index(i) for i in group["params"]):
            raise FormatError(
                "params must be parameter indices", path=state_path, key=f"param_groups[{n}].params"
            )
        indices += group["params"]
    factors = 2 * len(adapter.targets)
    if sorted(indices) != list(range(factors)):
        raise FormatError(
            f"param_groups index {len(indices)} parameters ({len(set(indices))} distinct), but the "
            f"checkpoint's adapter has {factors} factors ({len(adapter.targets)} targets)",
            path=state_path,
            key="param_groups",
        )
    plain = state.get("plain_state", {})
    for idx, entries in plain.items():
        if not (isinstance(idx, str) and idx.isdigit() and int(idx) < factors) or not isinstance(
            entries, dict
        ):
            raise FormatError(
                "entries must map a parameter index to an object", path=state_path, key=f"plain_state.{idx}"
            )
    opt_path = folder / "optimizer.safetensors"
    for name in tensors:
        if name == "rng.torch":
            continue
        parts = name.split(".", 2)
        if len(parts) != 3 or parts[0] != "state" or not parts[1].isdigit() or int(parts[1]) >= factors:
            raise FormatError("not an optimizer state tensor of this checkpoint", path=opt_path, key=name)
    rng = tensors.get("rng.torch")
    expected = torch.get_rng_state()
    if rng is None or rng.dtype != expected.dtype or tuple(rng.shape) != tuple(expected.shape):
        got = "missing" if rng is None else f"{rng.dtype} {tuple(rng.shape)}"
        raise FormatError(
            f"the random-number state must be {expected.dtype} {tuple(expected.shape)}, got {got}",
            path=opt_path,
            key="rng.torch",
        )
    if "grad_scaler" in state:
        check_grad_scaler(state["grad_scaler"], state_path)


def check_grad_scaler(saved: Any, path: Path) -> None:
    """A saved ``torch.amp.GradScaler`` state: the trainer's constants, a finite positive
    scale, a growth tracker within the growth interval."""
    fresh = {"growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000}
    if not isinstance(saved, dict) or set(saved) != {"scale", "_growth_tracker", *fresh}:
        raise FormatError("must be a loss-scaler state", path=path, key="grad_scaler")
    for key, value in fresh.items():
        if saved[key] != value or isinstance(saved[key], bool):
            raise FormatError(f"must be {value!r}, got {saved[key]!r}", path=path, key=f"grad_scaler.{key}")
    scale = saved["scale"]
    if not _real(scale) or not 0 < scale <= torch.finfo(torch.float32).max:
        raise FormatError(
            f"must be a positive float32 number, got {scale!r}", path=path, key="grad_scaler.scale"
        )
    tracker = saved["_growth_tracker"]
    if not _is_index(tracker) or tracker >= fresh["growth_interval"]:
        raise FormatError(
            f"must be an integer from 0 to {fresh['growth_interval'] - 1}, got {tracker!r}",
            path=path,
            key="grad_scaler._growth_tracker",
        )


def _real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# --- the whole optimizer state, against what this run's optimizer creates -------------------------


def reference_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The state dict ``optimizer`` has after one step: taken with zero gradients, then every
    parameter, gradient and state entry is put back as it was (the optimizer is fresh)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    saved = [(p, p.detach().clone(), p.grad) for p in params]
    try:
        for p in params:
            p.grad = torch.zeros_like(p)
        optimizer.step()
        reference = optimizer.state_dict()
        from adaptkit.training.checkpoint import _flatten

        tensors, meta = _flatten(reference)
        return {
            "tensors": {k: (t.dtype, tuple(t.shape)) for k, t in tensors.items()},
            "plain_state": meta["plain_state"],
            "param_groups": reference["param_groups"],
        }
    finally:
        with torch.no_grad():
            for p, data, grad in saved:
                p.copy_(data)
                p.grad = grad
        optimizer.state.clear()


def _same(a: Any, b: Any) -> bool:
    """Equal in value and kind, where JSON may have turned a tuple into a list and a whole
    float into an integer."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if _real(a) and _real(b):
        return float(a) == float(b)
    return type(a) is type(b) and a == b


def check_optimizer_state(
    reference: dict[str, Any], tensors: dict[str, torch.Tensor], state: dict[str, Any], folder: Path
) -> list[dict[str, Any]]:
    """Compare a checkpoint's optimizer state with ``reference`` (:func:`reference_state`).

    Returns:
        The param groups to load: the reference's, with the saved learning rates.

    Raises:
        FormatError: naming the file and the group, parameter or tensor.
    """
    groups = _check_groups(reference["param_groups"], state["param_groups"], folder / "state.json")
    _check_entries(reference, tensors, state, folder)
    return groups


def _check_groups(expected: list[dict[str, Any]], saved: list[Any], path: Path) -> list[dict[str, Any]]:
    if len(saved) != len(expected):
        raise FormatError(
            f"{len(saved)} param groups, this run's optimizer has {len(expected)}",
            path=path,
            key="param_groups",
        )
    groups = []
    for n, (want, got) in enumerate(zip(expected, saved, strict=True)):
        where = f"param_groups[{n}]"
        if got["params"] != want["params"]:
            raise FormatError(
                f"holds {len(got['params'])} parameters, this run's group holds {len(want['params'])}",
                path=path,
                key=where,
            )
        for key in sorted(set(want) | set(got)):
            if key in ("params", "lr"):
                continue
            if key not in got or key not in want:
                which = "lacks" if key not in got else "has"
                raise FormatError(f"{which} {key!r}, unlike this run's optimizer", path=path, key=where)
            if not _same(got[key], want[key]):
                raise FormatError(
                    f"is {got[key]!r}, this run's optimizer uses {want[key]!r}",
                    path=path,
                    key=f"{where}.{key}",
                )
        lr = got.get("lr")
        scale = want.get("lr_scale", 1.0)
        peak = MAX_LR * (scale if _real(scale) else 1.0)
        if not _real(lr) or not 0 <= lr <= peak:
            raise FormatError(
                f"must be a learning rate from 0 to {peak:g}, got {lr!r}", path=path, key=f"{where}.lr"
            )
        groups.append({**want, "lr": float(lr)})
    return groups


def _check_entries(
    reference: dict[str, Any], tensors: dict[str, torch.Tensor], state: dict[str, Any], folder: Path
) -> None:
    step = state["step"]
    opt_path, state_path = folder / "optimizer.safetensors", folder / "state.json"
    want_tensors: dict[str, tuple[Any, tuple[int, ...]]] = reference["tensors"]
    want_plain: dict[str, dict[str, Any]] = reference["plain_state"]
    got_plain: dict[str, dict[str, Any]] = state.get("plain_state", {})
    indices = {k.split(".")[1] for k in want_tensors} | set(want_plain)
    for idx in sorted(indices, key=int):
        tensor_keys = {k for k in want_tensors if k.split(".")[1] == idx}
        present = {k for k in tensor_keys if k in tensors}
        plain_present = set(got_plain.get(idx, {}))
        if not present and not plain_present:
            continue  # no step updated this parameter yet (a loss-scaled run skips overflowing steps)
        missing = sorted(tensor_keys - present) or sorted(
            f"{idx}.{k}" for k in set(want_plain.get(idx, {})) - plain_present
        )
        if missing:
            raise FormatError("missing, but this run's optimizer keeps it", path=opt_path, key=missing[0])
        extra = sorted(plain_present - set(want_plain.get(idx, {})))
        if extra:
            raise FormatError(
                "not kept by this run's optimizer", path=state_path, key=f"plain_state.{idx}.{extra[0]}"
            )
        for name in sorted(tensor_keys):
            _check_tensor(name, tensors[name], want_tensors[name], step, opt_path)
        for key, value in got_plain.get(idx, {}).items():
            want = want_plain[idx][key]
            where = f"plain_state.{idx}.{key}"
            if type(value) is not type(want):
                raise FormatError(f"must be {type(want).__name__}, got {value!r}", path=state_path, key=where)
            if key == "step" and not (_real(value) and float(value).is_integer() and 0 <= value <= step):
                raise FormatError(
                    f"must be a step count from 0 to {step}, got {value!r}", path=state_path, key=where
                )
    extra_tensors = sorted(set(tensors) - set(want_tensors) - {"rng.torch"})
    if extra_tensors:
        raise FormatError("not kept by this run's optimizer", path=opt_path, key=extra_tensors[0])


def _check_tensor(
    name: str, tensor: torch.Tensor, want: tuple[Any, tuple[int, ...]], step: int, path: Path
) -> None:
    dtype, shape = want
    if tensor.dtype != dtype or tuple(tensor.shape) != shape:
        raise FormatError(
            f"is {str(tensor.dtype).removeprefix('torch.')} {list(tensor.shape)}, this run's optimizer keeps "
            f"{str(dtype).removeprefix('torch.')} {list(shape)}",
            path=path,
            key=name,
        )
    if not tensor.is_floating_point():
        return
    if not bool(torch.isfinite(tensor).all()):
        raise FormatError("holds NaN or Inf values", path=path, key=name)
    leaf = name.rsplit("/", 1)[-1].split(".")[-1]
    if leaf in _SQUARES and bool((tensor < 0).any()):
        raise FormatError("a second moment (a mean of squares) cannot be negative", path=path, key=name)
    if leaf == "step":
        value = float(tensor.reshape(-1)[0]) if tensor.numel() else 0.0
        if tensor.numel() != 1 or not value.is_integer() or not 0 <= value <= step:
            raise FormatError(f"must be a step count from 0 to {step}", path=path, key=name)
