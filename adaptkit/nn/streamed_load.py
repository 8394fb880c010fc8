"""Load a checkpoint into a model one tensor at a time: the peak is the model plus one tensor.

transformers' ``from_pretrained`` maps the checkpoint files and keeps much of them resident
while it loads: measured on CPU, a 1.1B bf16 checkpoint loaded as float32 peaks at the float32
model plus most of the bf16 files (6.5 GB for a 4.4 GB model); for a QLoRA base (107M
parameters, ``BitsAndBytesConfig``) 0.4–0.56 GB above the start for a 0.08 GB 4-bit model.
This loader instead:

1. builds the model class on the meta device for its parameters (buffers such as rotary
   frequencies are computed normally, on CPU);
2. reads the checkpoint tensor by tensor with plain reads (no memory map), maps each name to
   its parameter with the model class's own loading renames, and places it in the requested
   dtype — or hands it to a ``place`` hook (the ``qlora`` backend packs NF4 there);
3. ties shared weights as the class declares and checks that nothing is left unloaded.

Anything this loader cannot map exactly (a checkpoint whose weights need fused/split
conversions, unexpected, missing or differently shaped tensors) makes :func:`plan` return
``None``, and the caller falls back to transformers' loader, which refuses a checkpoint that
does not match its config (:func:`adaptkit.io.models.check_loading_info`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


@contextlib.contextmanager
def _parameters_on_meta():
    """Parameters created inside go to the meta device; buffers are built normally."""
    original = nn.Module.register_parameter

    def register(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        original(module, name, param)
        if param is not None and param.device.type != "meta":
            module._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    nn.Module.register_parameter = register  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = original  # type: ignore[method-assign]


def _headers(folder: Path) -> dict[Path, dict[str, Any]]:
    from adaptkit.io.models import safetensors_files
    from adaptkit.io.safetensors_strict import checked_header

    return {f: checked_header(f) for f in safetensors_files(folder)}


def plan(folder: Path) -> dict[str, Any] | None:
    """What :func:`load` needs, or ``None`` when this loader cannot map the checkpoint exactly."""
    import transformers

    from adaptkit.nn.placement import checkpoint_renamer

    try:
        config = transformers.AutoConfig.from_pretrained(
            folder, local_files_only=True, trust_remote_code=False
        )
    except Exception:  # a config transformers rejects: its loader reports that in one line
        return None
    names = list(getattr(config, "architectures", None) or [])
    # Only a model class: config.json names it, and "AutoTokenizer" or "__class__" are attributes too.
    found = (getattr(transformers, n, None) for n in names)
    cls = next(
        (c for c in found if isinstance(c, type) and issubclass(c, transformers.PreTrainedModel)), None
    )
    if cls is None:
        return None
    with _parameters_on_meta():
        model = cls._from_config(config)
    rename = checkpoint_renamer(model)
    headers = _headers(folder)
    state = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    placed: dict[str, tuple[Path, int, dict[str, Any]]] = {}
    for f, (offset, header) in headers.items():
        for key, info in header.items():
            name = rename(key)
            if name not in state or info.get("dtype") not in _DTYPES or name in placed:
                return None  # unexpected, non-float or duplicated: leave it to transformers
            if tuple(info.get("shape") or ()) != state[name]:
                return None  # another shape than config.json builds: transformers refuses it
            placed[name] = (f, offset, info)
    tied = _tied(model)
    missing = [n for n in state if n not in placed and n not in tied]
    parameters = dict(model.named_parameters())
    if any(n in parameters for n in missing):
        return None
    return {"model": model, "placed": placed, "tied": tied}


def _tied(model: Any) -> set[str]:
    """Parameter names that share storage with another parameter once the class ties weights."""
    if not getattr(getattr(model, "config", None), "tie_word_embeddings", False):
        return set()
    out = getattr(model, "get_output_embeddings", lambda: None)()
    if out is None:
        return set()
    return {f"{n}.weight" for n, m in model.named_modules() if m is out}


_TRIM_EVERY = 256 << 20


def release_heap() -> None:
    """Hand freed heap pages back to the OS (glibc's ``malloc_trim``); a no-op elsewhere."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def _read(path: Path, offset: int, info: dict[str, Any]) -> torch.Tensor:
    start, end = info["data_offsets"]
    buf = bytearray(end - start)
    with open(path, "rb") as fh:
        fh.seek(offset + start)
        fh.readinto(buf)
    return torch.frombuffer(buf, dtype=_DTYPES[info["dtype"]]).reshape(info["shape"])


def read_tensor(path: Path, offset: int, info: dict[str, Any]) -> torch.Tensor:
    """One whole tensor of a checkpoint file (``offset``/``info`` as :func:`plan` places it)."""
    return _read(path, offset, info)


def read_rows(path: Path, offset: int, info: dict[str, Any], start: int, stop: int) -> torch.Tensor:
    """Rows ``start:stop`` (along dim 0) of one checkpoint tensor, reading only their bytes.

    safetensors stores a tensor row-major and contiguous, so rows ``[start, stop)`` of a tensor
    of shape ``(d0, d1, …)`` are the bytes ``[start·b, stop·b)`` of its data, with
    ``b = d1·d2·…·itemsize``: a sharded loader reads its own share and nothing else.
    """
    shape = list(info["shape"])
    dtype = _DTYPES[info["dtype"]]
    if not shape:  # a scalar has no rows to split
        return _read(path, offset, info)
    row_bytes = dtype.itemsize
    for d in shape[1:]:
        row_bytes *= d
    first, _ = info["data_offsets"]
    buf = bytearray((stop - start) * row_bytes)
    if buf:
        with open(path, "rb") as fh:
            fh.seek(offset + first + start * row_bytes)
            fh.readinto(buf)
    return (
        torch.frombuffer(buf, dtype=dtype).reshape([stop - start, *shape[1:]])
        if buf
        else torch.empty([0, *shape[1:]], dtype=dtype)
    )


#: ``place(name, tensor, module, attr) -> bool``: put ``tensor`` in place itself (True) or
#: leave it to the loader (False).
Place = Callable[[str, torch.Tensor, nn.Module, str], bool]


def load(
    folder: Path,
    prepared: dict[str, Any],
    *,
    dtype: torch.dtype,
    device: torch.device | str = "cpu",
    place: Place | None = None,
    progress: Any = None,
) -> Any:
    """The model of :func:`plan`, loaded in ``dtype`` on ``device`` (``_keep_in_fp32_modules``
    in float32), in eval mode with gradients off. ``progress`` is called with the number of
    tensors done."""
    model = prepared["model"]
    device = torch.device(device)
    keep_fp32 = tuple(getattr(model, "_keep_in_fp32_modules", None) or ())
    since_trim = 0
    for i, (name, (path, offset, info)) in enumerate(
        sorted(prepared["placed"].items(), key=lambda kv: kv[0])
    ):
        tensor = _read(path, offset, info)
        module_name, _, attr = name.rpartition(".")
        module = model.get_submodule(module_name) if module_name else model
        if place is None or not place(name, tensor, module, attr):
            want = torch.float32 if keep_fp32 and any(k in name for k in keep_fp32) else dtype
            value = tensor.to(device=device, dtype=want)
            if attr in module._parameters:
                module._parameters[attr] = nn.Parameter(value, requires_grad=False)
            else:
                module._buffers[attr] = value
        since_trim += tensor.numel() * tensor.element_size()
        del tensor
        # Freed temporaries (casts, bitsandbytes' packing) stay in glibc's heap; hand them back
        # every 256 MB read, or the heap grows by a few temporaries per layer (measured: 2.5x
        # the model). Trimming after every tensor cost 12% more load time for no lower peak.
        if since_trim >= _TRIM_EVERY:
            release_heap()
            since_trim = 0
        if progress is not None:
            progress(i + 1)
    release_heap()
    if prepared["tied"]:
        model.tie_weights()
    for module in model.modules():  # buffers computed at construction (rotary frequencies)
        for key, buf in list(module._buffers.items()):
            if buf is not None and buf.device != device:
                module._buffers[key] = buf.to(device)
    unloaded = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    if unloaded:
        from adaptkit.errors import FormatError

        raise FormatError(f"the checkpoint does not hold {unloaded[0]!r}", path=folder)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def load_streamed(folder: Path, dtype: torch.dtype) -> Any | None:
    """``folder``'s causal LM in ``dtype`` on CPU, tensor by tensor; ``None`` when :func:`plan`
    cannot map the checkpoint (use :func:`adaptkit.io.models.load_causal_lm` then)."""
    prepared = plan(folder)
    return None if prepared is None else load(folder, prepared, dtype=dtype)
