"""Rewrite a safetensors file with some tensors updated, holding one tensor at a time.

Merging keeps every tensor's dtype and shape, so the output header is byte-for-byte the input
header: it is copied verbatim, then the data region is streamed tensor by tensor in offset
order, each target weight read, updated (``W + ΔW`` computed in float32, cast back) and
written. Peak memory is the largest tensor (plus its float32 working copy), not the file.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from adaptkit.errors import AdaptkitError
from adaptkit.io.safetensors_strict import checked_header, read_header

_TORCH_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}

Update = Callable[[torch.Tensor], torch.Tensor]


def tensor_index(path: Path) -> dict[str, dict[str, Any]]:
    """``name -> {dtype, shape, data_offsets}`` of a safetensors file, checked strictly."""
    return checked_header(path)[1]


def stream_update(src: Path, dst: Path, updates: dict[str, Update]) -> int:
    """Copy ``src`` to ``dst`` applying ``updates[name](tensor)``; returns the largest tensor's
    byte size (the working-set bound)."""
    header, n, _ = read_header(src)
    entries = sorted(
        ((v["data_offsets"][0], v["data_offsets"][1], k, v) for k, v in header.items() if k != "__metadata__")
    )
    largest = 0
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        fout.write(fin.read(8 + n))  # length prefix + header, unchanged
        base = 8 + n
        for start, end, name, info in entries:
            fin.seek(base + start)
            raw = fin.read(end - start)
            largest = max(largest, end - start)
            if name in updates:
                dtype = _TORCH_DTYPES[info["dtype"]]
                tensor = torch.frombuffer(bytearray(raw), dtype=dtype).reshape(info["shape"])
                new = updates[name](tensor)
                if new.dtype != dtype or list(new.shape) != list(info["shape"]):
                    raise AdaptkitError(f"update changed dtype/shape of {name}")  # a bug, not input
                raw = new.contiguous().view(torch.uint8).numpy().tobytes()
            fout.write(raw)
        fout.flush()
        os.fsync(fout.fileno())
    return largest
