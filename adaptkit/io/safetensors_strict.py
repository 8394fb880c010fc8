"""Strict reading of safetensors files from untrusted sources.

safetensors' own parser (0.8) rejects truncation and bad offsets but accepts duplicate
tensor names (the last one wins) and non-finite JSON in metadata. Here the header is parsed
first with stricter rules — size capped *before* anything is allocated, duplicate keys
refused, offsets bounded, overlaps and trailing bytes refused — and only then are the
tensors handed to safetensors.
"""

from __future__ import annotations

import math
import os
import struct
from pathlib import Path
from typing import Any

from adaptkit.errors import FormatError, InvalidAdapterError
from adaptkit.io.fileio import open_regular_file
from adaptkit.io.jsonio import strict_json

#: safetensors' own limit for the JSON header; checked before anything is allocated.
MAX_HEADER_BYTES = 100_000_000
FLOAT_DTYPES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64"}
#: Bytes per element of the safetensors dtypes whose size is whole bytes.
DTYPE_BYTES = {
    **{"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1},
    **{"I16": 2, "U16": 2, "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4},
    **{"I64": 8, "U64": 8, "F64": 8, "C64": 8},
}
#: Tensors an adapter (or checkpoint) file may hold: an all-linear LoRA of a 70B model has ~1,200.
MAX_TENSORS = 1 << 17


def _parse_header(fh: Any, size: int, p: Path) -> tuple[dict[str, Any], bytes]:
    """Read and parse the header from ``fh`` (at offset 0); return it and the raw bytes read."""
    prefix = fh.read(8)
    if len(prefix) < 8:
        raise FormatError(f"too small to be a safetensors file ({size} bytes)", path=p)
    (n,) = struct.unpack("<Q", prefix)
    if n > MAX_HEADER_BYTES:
        raise FormatError(f"safetensors header length {n} exceeds the {MAX_HEADER_BYTES}-byte cap", path=p)
    if 8 + n > size:
        raise FormatError(
            f"truncated: header claims {n} bytes but only {size - 8} follow the length prefix",
            path=p,
        )
    raw = fh.read(n)
    header = strict_json(raw, what="safetensors header", path=p)
    if not isinstance(header, dict):
        raise FormatError("safetensors header is not a JSON object", path=p)
    return header, prefix + raw


def _read(path: Path) -> tuple[dict[str, Any], int, int]:
    """``(header, header_length, file_size)``, reading only the header."""
    fd = open_regular_file(path, what="safetensors file")
    try:
        size = os.fstat(fd).st_size
        with os.fdopen(fd, "rb", closefd=False) as fh:
            header, head = _parse_header(fh, size, path)
    finally:
        os.close(fd)
    return header, len(head) - 8, size


def read_header(path: str | os.PathLike[str]) -> tuple[dict[str, Any], int, int]:
    """Parse a safetensors header strictly, reading only the header.

    Returns:
        ``(header, header_length, file_size)``.

    Raises:
        FormatError: not a regular file, truncated, oversized or malformed header, duplicate
            tensor names.
    """
    return _read(Path(path))


def _shape_problem(key: str, info: dict[str, Any], start: int, end: int) -> str | None:
    """A problem with ``info``'s shape/dtype against its byte span, or None."""
    shape = info.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        return f"{key}: shape {shape!r} is not a list of sizes"
    width = DTYPE_BYTES.get(info.get("dtype"))
    if width is None:
        return None  # a dtype safetensors knows and adaptkit does not size (sub-byte floats)
    numel = math.prod(shape)
    if numel * width != end - start:
        return f"{key}: {info.get('dtype')} {shape} needs {numel * width} bytes but spans {end - start}"
    return None


def header_problems(
    header: dict[str, Any], header_len: int, size: int, *, float_only: bool = True
) -> list[str]:
    """Every problem of a parsed header against the file's size: malformed entries, shapes
    that disagree with their byte spans, offsets out of bounds, overlaps, trailing bytes and
    (``float_only``) non-float dtypes."""
    problems = []
    data_len = size - 8 - header_len
    spans = []
    for key, info in header.items():
        if key == "__metadata__":
            continue
        if not isinstance(info, dict) or not isinstance(info.get("data_offsets"), list):
            problems.append(f"{key}: malformed tensor entry")
            continue
        offsets = info["data_offsets"]
        if len(offsets) != 2 or not all(isinstance(o, int) and o >= 0 for o in offsets):
            problems.append(f"{key}: bad data_offsets {offsets!r}")
            continue
        start, end = offsets
        if start > end or end > data_len:
            problems.append(f"{key}: data_offsets {offsets!r} out of bounds (data is {data_len} bytes)")
            continue
        dtype = info.get("dtype")
        if not isinstance(dtype, str):
            problems.append(f"{key}: dtype {dtype!r} is not a safetensors dtype")
            continue
        shape_problem = _shape_problem(key, info, start, end)
        if shape_problem:
            problems.append(shape_problem)
            continue
        spans.append((start, end, key))
        if float_only and dtype not in FLOAT_DTYPES:
            problems.append(f"{key}: dtype {dtype!r} is not a float type (F16, BF16, F32, F64)")
    spans.sort()
    covered = 0
    for start, end, key in spans:
        if start < covered:
            problems.append(f"{key}: overlaps another tensor's bytes")
        covered = max(covered, end)
    if not problems and covered != data_len:
        problems.append(f"{data_len - covered} trailing bytes after the last tensor")
    return problems


def checked_header(path: str | os.PathLike[str]) -> tuple[int, dict[str, Any]]:
    """A weight file's header, read alone and checked strictly (any dtype):
    ``(offset of the data, {tensor name: entry})``.

    Raises:
        FormatError / InvalidAdapterError: as :func:`read_header` and :func:`header_problems`.
    """
    header, n, size = read_header(path)
    problems = header_problems(header, n, size, float_only=False)
    if problems:
        raise InvalidAdapterError.from_problems(problems, path=path)
    return 8 + n, {k: v for k, v in header.items() if k != "__metadata__"}


def empty_tensor_problems(header: dict[str, Any]) -> list[str]:
    """Tensors of a checked header with a dimension of size 0.

    Nothing adaptkit reads with :func:`read_tensors` (LoRA factors, saved modules, optimizer
    state) is legitimately empty: a factor with 0 input or output features, or rank 0, is an
    update of nothing that every later step (inspect's norms, merges, exports) would
    otherwise carry along or divide by.
    """
    return [
        f"{key}: zero-size tensor (shape {info['shape']}); every dimension must be at least 1"
        for key, info in header.items()
        if key != "__metadata__" and 0 in info["shape"]
    ]


def read_tensors(
    path: str | os.PathLike[str], *, float_only: bool = True, max_tensors: int = MAX_TENSORS
) -> tuple[dict[str, str], dict[str, Any]]:
    """Read a safetensors file strictly: ``(metadata, tensors)``.

    Only the header is read before it is checked against the file's size, so a bad file
    costs its header, not its bytes. The checked file is then memory-mapped by safetensors
    (tensors are copied out once); the file must still be the one checked (same inode, size
    and modification time), or nothing is returned.

    Raises:
        FormatError: unreadable, not a regular file, malformed header, more than
            ``max_tensors`` tensors, changed while being read.
        InvalidAdapterError: every header problem at once (offsets, shapes, overlaps,
            trailing bytes, non-float dtypes), naming the tensors; zero-size tensors.
    """
    from safetensors import SafetensorError, safe_open

    p = Path(path)
    fd = open_regular_file(p, what="safetensors file")
    try:
        checked = os.fstat(fd)
        with os.fdopen(fd, "rb", closefd=False) as fh:
            header, head = _parse_header(fh, checked.st_size, p)
    finally:
        os.close(fd)
    count = len(header) - ("__metadata__" in header)
    if count > max_tensors:
        raise FormatError(f"{count} tensors, more than the {max_tensors} an adapter file may hold", path=p)
    problems = header_problems(header, len(head) - 8, checked.st_size, float_only=float_only)
    problems = problems or empty_tensor_problems(header)
    if problems:
        raise InvalidAdapterError.from_problems(problems, path=p)
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise FormatError("safetensors __metadata__ must map strings to strings", path=p)
    try:
        with safe_open(str(p), framework="pt") as fh:
            now = os.stat(p)
            same = (now.st_dev, now.st_ino, now.st_size, now.st_mtime_ns) == (
                checked.st_dev,
                checked.st_ino,
                checked.st_size,
                checked.st_mtime_ns,
            )
            if not same:
                raise FormatError("the file changed while it was being read", path=p)
            tensors = {name: fh.get_tensor(name) for name in header if name != "__metadata__"}
    except (SafetensorError, ValueError, RuntimeError, OSError) as exc:
        raise FormatError(f"unreadable tensor data: {exc}", path=p) from None
    return meta, tensors
