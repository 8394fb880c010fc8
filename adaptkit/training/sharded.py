"""Sharded training with PyTorch's FSDP2 (``torchrun ... -m adaptkit train --shard``).

Under DDP every process holds the whole base. With ``--shard`` each of the ``N`` processes
holds ``1/N`` of it: :func:`torch.distributed.fsdp.fully_shard` splits every parameter along
its first dimension, with one unit per transformer block (the blocks the model class names in
``_no_split_modules``), one each for the input embeddings and the output head when they are not
tied, and the rest (the final norm) at the root. A unit's parameters are gathered just before
it computes and freed right after, in the forward and again in the backward pass, so a process
holds its shards plus about one unit whole. The LoRA factors live in their block's unit: they
are sharded too, and so is their optimizer state.

Loading never holds the whole base in one process (:func:`plan_shards`, then :func:`materialize`):

1. the model class is built on the meta device (:func:`adaptkit.nn.streamed_load.plan`) and its
   parameters cast to the base dtype (still on meta: no memory);
2. a backend that stores tensors its own way swaps its layers in this skeleton
   (``backend.shard_plan``: ``qlora`` puts NF4 layers stored in the compute dtype, the
   FSDP-QLoRA storage trick), then ``backend.prepare`` attaches LoRA: the factors are real,
   small and on CPU, drawn from the seed exactly as in a one-process run;
3. every process joins the group; ``fully_shard`` per unit, then ``to_empty``: each process
   allocates only its rows;
4. for every checkpoint tensor a process reads only its own rows from the file
   (:func:`adaptkit.nn.streamed_load.read_rows`) into its shard. A tensor the backend converts
   (4-bit packing is blockwise over the whole tensor, and double quantization takes the mean of
   every block's scale) is read whole, one at a time, converted, and cut to the process's rows.

Everything that can refuse (the launch, the backend, the model class, the targets) refuses in
steps 1–2, before any process waits on a peer.

The update equals one process's with the whole batch: FSDP2 reduce-scatters each gradient as
its mean over the ``N`` processes, and the trainer scales each process's summed loss by
``N / T`` (``T``: the step's target tokens over all processes), so each LoRA factor receives
``Σ_processes ∂L_p/∂θ / T``, the gradient of the whole step's mean token loss.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adaptkit.errors import AdaptkitError

#: Read-and-free rhythm of the loader: freed heap goes back to the OS every 256 MB read (see
#: :mod:`adaptkit.nn.streamed_load`).
_TRIM_EVERY = 256 << 20
#: glibc's ``mallopt`` parameter number for the mmap threshold (``M_MMAP_THRESHOLD`` in malloc.h).
_M_MMAP_THRESHOLD = -3
#: Allocations from this size up get their own mapping (see :func:`_unfragmented_gathers`).
_MMAP_FROM = 1 << 20


@dataclass
class ShardPlan:
    """A run's model before sharding: everything decided, nothing of the base in memory.

    Attributes:
        model: The skeleton (base parameters on the meta device) with LoRA attached.
        placed: Checkpoint tensor name -> ``(file, header offset, header entry)``.
        slots: Checkpoint tensor name -> ``(module, attribute)`` that receives it.
        load_dtype: Checkpoint tensor name -> the dtype a one-process run loads it in (a
            backend may widen the parameter afterwards, as ``qlora`` upcasts norms).
        convert: Checkpoint tensor name -> the backend's conversion of the whole tensor.
        units: The modules sharded as their own unit (blocks, embeddings, head).
        trainable: ``(module, attribute)`` of each parameter ``prepare`` returned, in order.
        blocks: How many of ``units`` are transformer blocks.
        dtype: The base dtype.
    """

    model: Any
    placed: dict[str, tuple[Path, int, dict[str, Any]]]
    slots: dict[str, tuple[nn.Module, str]]
    load_dtype: dict[str, torch.dtype]
    convert: dict[str, Callable[[torch.Tensor], torch.Tensor]]
    units: list[nn.Module]
    trainable: list[tuple[nn.Module, str]] = field(default_factory=list)
    blocks: int = 0
    dtype: torch.dtype = torch.float32


def check_request(cfg: Any, backend: Any, dist: Any, *, model_given: bool) -> None:
    """Refuse ``--shard`` where it cannot run, before anything is read.

    Raises:
        AdaptkitError: not started by ``torchrun``, a world of one process, a backend that does
            not claim ``shard``, or a model handed over already loaded.
    """
    if not dist.launched:
        raise AdaptkitError(
            "--shard splits the base across processes, but this process was not started by torchrun",
            key="--shard",
            hint="torchrun --nproc_per_node 2 -m adaptkit train --shard ...",
        )
    if dist.world < 2:
        raise AdaptkitError(
            "--shard with a world size of 1: there is no other process to hold a share",
            key="--shard",
            hint="start 2 or more processes (torchrun --nproc_per_node 2), or leave out --shard",
        )
    name = getattr(backend, "name", "?")
    if "shard" not in getattr(backend, "supports", ()):
        raise AdaptkitError(
            f"backend {name!r} does not support --shard (its supports: "
            f"{', '.join(sorted(getattr(backend, 'supports', ()))) or 'none'})",
            key="--shard",
            hint="train without --shard (DDP), or with a backend that supports it (lora, qlora)",
        )
    if model_given:
        raise AdaptkitError(
            "--shard loads the base itself, each process its own rows: give the model as a folder "
            "or Hub id, not as a loaded model",
            key="--shard",
        )


def plan_shards(cfg: Any, backend: Any, folder: Path, device: torch.device, note: Any) -> ShardPlan:
    """Steps 1–2 of the module docstring: the skeleton in the base dtype, the backend's layers,
    LoRA attached (seeded with ``cfg.seed``). Needs no process group.

    Raises:
        AdaptkitError: an fp16 base, a checkpoint the streamed loader cannot map, a model class
            without transformer blocks, and whatever the backend refuses.
    """
    from adaptkit.io.models import torch_dtype
    from adaptkit.nn.streamed_load import plan

    dtype = torch_dtype(cfg.base_dtype, folder)
    if dtype == torch.float16:
        raise AdaptkitError(
            "an fp16 base needs loss scaling, and under --shard each process would see only its "
            "share of the gradients when deciding to skip a step",
            key="--base-dtype",
            hint="pass --base-dtype bf16 (or fp32)",
        )
    prepared = plan(folder)
    if prepared is None:
        raise AdaptkitError(
            "--shard loads the base tensor by tensor, and this checkpoint's tensors do not map one to "
            "one onto the model class (they need transformers' conversions)",
            path=folder,
            key="--shard",
            hint="train without --shard (DDP)",
        )
    model = prepared["model"]
    units, blocks = _units(model)
    load_dtype = _cast_skeleton(model, prepared["placed"], dtype)
    if prepared["tied"]:
        model.tie_weights()
    convert = {}
    if hasattr(backend, "shard_plan"):
        convert = dict(backend.shard_plan(cfg, model, device, note) or {})
    slots = {name: _slot(model, name) for name in prepared["placed"]}
    unknown = sorted(set(convert) - set(slots))
    if unknown:
        raise AdaptkitError(f"backend {backend.name!r} converts {unknown[0]!r}, which the checkpoint lacks")
    torch.manual_seed(cfg.seed)
    params = backend.prepare(model, cfg.lora, cfg, note)
    if not params:
        raise AdaptkitError(f"backend {cfg.backend!r} left nothing to train")
    filled = {id(m._parameters.get(k)) for m, k in slots.values()}
    unloaded = [n for n, p in model.named_parameters() if p.is_meta and id(p) not in filled]
    if unloaded:
        from adaptkit.errors import FormatError

        raise FormatError(f"the checkpoint does not hold {unloaded[0]!r}", path=folder)
    where = {id(p): (m, k) for m in model.modules() for k, p in m._parameters.items() if p is not None}
    return ShardPlan(
        model=model,
        placed=prepared["placed"],
        slots=slots,
        load_dtype=load_dtype,
        convert=convert,
        units=units,
        trainable=[where[id(p)] for p in params],
        blocks=blocks,
        dtype=dtype,
    )


def _units(model: nn.Module) -> tuple[list[nn.Module], int]:
    """The modules to shard as units of their own: the outermost transformer blocks, and the
    input embeddings and output head when they do not share a weight (a shared weight must stay
    in one unit: the root); and how many are blocks."""
    kinds = set(getattr(model, "_no_split_modules", None) or ())
    named = [(n, m) for n, m in model.named_modules() if n and type(m).__name__ in kinds]
    blocks = [m for n, m in named if not any(n.startswith(o + ".") for o, _ in named)]
    if not blocks:
        raise AdaptkitError(
            f"{type(model).__name__} cannot be sharded: the class names no transformer block "
            "(_no_split_modules) to shard by",
            key="--shard",
            hint="train it without --shard (DDP)",
        )
    ends = []
    for getter in ("get_input_embeddings", "get_output_embeddings"):
        try:
            module = getattr(model, getter)()
        except (AttributeError, NotImplementedError):
            module = None
        if isinstance(module, nn.Module) and not any(module is b or _inside(module, b) for b in blocks):
            ends.append(module)
    weights = [getattr(m, "weight", None) for m in ends]
    if len(ends) == 2 and weights[0] is not None and weights[0] is weights[1]:
        ends = []  # tied: both stay with the root
    return blocks + ends, len(blocks)


def _inside(module: nn.Module, block: nn.Module) -> bool:
    return any(module is m for m in block.modules())


def _cast_skeleton(model: nn.Module, placed: dict[str, Any], dtype: torch.dtype) -> dict[str, torch.dtype]:
    """Give every meta parameter the dtype a one-process run loads it in (``dtype``; float32
    for the class's ``_keep_in_fp32_modules``); returns it per checkpoint name."""
    keep_fp32 = tuple(getattr(model, "_keep_in_fp32_modules", None) or ())
    out = {}
    for name in placed:
        module_name, _, attr = name.rpartition(".")
        module = model.get_submodule(module_name) if module_name else model
        want = torch.float32 if keep_fp32 and any(k in name for k in keep_fp32) else dtype
        out[name] = want
        param = module._parameters.get(attr)
        if param is not None and param.is_floating_point() and param.dtype != want:
            module._parameters[attr] = nn.Parameter(
                torch.empty_like(param, dtype=want, device="meta"), requires_grad=False
            )
    return out


def _slot(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    module_name, _, attr = name.rpartition(".")
    return (model.get_submodule(module_name) if module_name else model), attr


def materialize(plan: ShardPlan, cfg: Any, dist: Any, note: Any) -> tuple[nn.Module, list[Any]]:
    """Steps 3–4: shard the skeleton over the joined process group and load each process's rows.

    Returns:
        ``(model, params)``: the sharded model in train-ready state, and the sharded parameters
        that ``prepare`` returned, in its order (the optimizer's).
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, fully_shard

    model = plan.model
    offload = cfg.cpu_offload and dist.device.type == "cuda"
    if cfg.cpu_offload and not offload:
        note("--cpu-offload: training on CPU, the shards are in CPU memory already")
    home = torch.device("cpu") if offload else dist.device
    if dist.device.type == "cpu":
        _unfragmented_gathers()
    # to_empty() leaves every tensor uninitialised: keep what the skeleton already holds (buffers
    # computed at construction, such as rotary frequencies; the LoRA factors prepare drew).
    buffers = [(m, k, b) for m in model.modules() for k, b in m._buffers.items() if b is not None]
    drawn = [
        (m, k, p.detach().clone())
        for m in model.modules()
        for k, p in m._parameters.items()
        if p is not None and not p.is_meta
    ]
    mesh = init_device_mesh(dist.device.type, (dist.world,))
    policy = {"offload_policy": CPUOffloadPolicy()} if offload else {}
    for unit in plan.units:
        fully_shard(unit, mesh=mesh, reshard_after_forward=True, **policy)
    fully_shard(model, mesh=mesh, reshard_after_forward=True, **policy)
    model.to_empty(device=home)
    with torch.no_grad():
        for module, key, buf in buffers:
            module._buffers[key] = buf.to(dist.device)
        for module, key, value in drawn:
            copy_whole(module._parameters[key], value)
        _load_rows(plan, dist.device)
    params = [m._parameters[k] for m, k in plan.trainable]
    note(
        f"sharded with FSDP2 over {dist.world} processes: {len(plan.units)} units "
        f"({plan.blocks} transformer blocks) and the root"
        + (", parameters offloaded to CPU" if offload else "")
    )
    return model.train(), params


def _unfragmented_gathers() -> None:
    """Give every CPU allocation of 1 MiB or more its own mapping, returned to the OS when freed.

    FSDP gathers each unit's weights before it computes and frees them after, twice per step.
    glibc raises its mmap threshold to the size of the first large block freed (up to 32 MiB),
    so later gathers land in the heap, whose freed holes it keeps: measured on the 0.2B
    ``realsize`` model (2 processes, bf16), a process's RSS grew by 100–180 MB per step to 1.8 GB
    after six steps, against 0.84 GB flat with the threshold fixed at 1 MiB (one process holding
    the whole model: 0.91 GB). Fixing it (``mallopt``) turns that adjustment off. The price is
    fresh pages faulted in for every gather: 6.0 s a step there, against 3.4–4.1 s with the
    threshold at 32 MiB (and RSS growing to 1.7 GB), on a loaded machine. A no-op without glibc.
    """
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, _MMAP_FROM)
    except (OSError, AttributeError):  # not glibc: its own allocator decides
        pass


def _load_rows(plan: ShardPlan, device: torch.device) -> None:
    """Every checkpoint tensor into its slot: a parameter gets this process's rows; a buffer
    (not sharded) the whole tensor."""
    from adaptkit.nn.streamed_load import read_rows, read_tensor, release_heap

    since_trim = 0
    for name, (path, offset, info) in sorted(plan.placed.items()):
        module, attr = plan.slots[name]
        if attr in module._buffers:
            tensor = read_tensor(path, offset, info)
            module._buffers[attr] = tensor.to(device=device, dtype=plan.load_dtype[name])
        else:
            param = module._parameters[attr]
            if name in plan.convert:
                whole = plan.convert[name](read_tensor(path, offset, info))
                start, stop = row_range(param)
                tensor = whole[start:stop]
            else:
                start, stop = row_range(param)
                tensor = read_rows(path, offset, info, start, stop).to(plan.load_dtype[name])
            _local(param).copy_(tensor)
        since_trim += tensor.numel() * tensor.element_size()
        del tensor
        if since_trim >= _TRIM_EVERY:
            release_heap()
            since_trim = 0
    release_heap()


def _local(param: Any) -> torch.Tensor:
    to_local = getattr(param, "to_local", None)
    return to_local() if callable(to_local) else param


def row_range(param: Any) -> tuple[int, int]:
    """The rows ``[start, stop)`` of ``param`` (a sharded ``DTensor``) this process holds.

    FSDP2 splits dim 0 as :func:`torch.chunk` does: chunks of ``⌈d₀/N⌉`` rows, in rank order,
    the last ones shorter or empty.
    """
    from torch.distributed.tensor import Shard

    mesh = param.device_mesh
    if tuple(param.placements) != (Shard(0),):
        raise AdaptkitError(f"unexpected sharding {param.placements}: adaptkit shards dim 0 on one mesh axis")
    rows, world, rank = param.shape[0], mesh.size(), mesh.get_local_rank()
    chunk = math.ceil(rows / world)
    start = min(rank * chunk, rows)
    stop = min(start + chunk, rows)
    held = param.to_local().shape[0]
    if stop - start != held:
        raise AdaptkitError(f"this process holds {held} rows of a {rows}-row parameter, not {stop - start}")
    return start, stop


def copy_whole(param: Any, value: torch.Tensor) -> None:
    """Set ``param`` to the whole ``value``: all of it, or this process's rows when sharded."""
    with torch.no_grad():
        if getattr(param, "device_mesh", None) is None:
            param.copy_(value)
            return
        start, stop = row_range(param)
        param.to_local().copy_(value[start:stop])


def like_param(value: Any, param: Any) -> Any:
    """A checkpoint's whole optimizer-state tensor laid out as ``param`` is: this process's rows
    as a ``DTensor`` when ``param`` is sharded and ``value`` has its shape; otherwise as is."""
    mesh = getattr(param, "device_mesh", None)
    if mesh is None or not isinstance(value, torch.Tensor) or tuple(value.shape) != tuple(param.shape):
        return value
    from torch.distributed.tensor import DTensor

    start, stop = row_range(param)
    rows = value[start:stop].to(param.to_local().device).contiguous()
    return DTensor.from_local(
        rows, mesh, param.placements, run_check=False, shape=param.shape, stride=param.stride()
    )


def whole_optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """``optimizer.state_dict()`` with every sharded tensor gathered whole. A collective: every
    process calls it, and the state is walked in the same order on each."""

    def whole(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: whole(v) for k, v in value.items()}
        full = getattr(value, "full_tensor", None)
        return full() if callable(full) else value

    state = optimizer.state_dict()
    return {
        "state": {idx: whole(entries) for idx, entries in sorted(state["state"].items())},
        "param_groups": state["param_groups"],
    }
