"""Strict reading of safetensors files from untrusted sources.

safetensors' own parser (0.8) rejects truncation and bad offsets but accepts duplicate
tensor names (the last one wins) and non-finite JSON in metadata. Here the header is parsed
first with stricter rules — size capped *before* anything is allocated, duplicate keys
refused, offsets bounded, overlaps and trailing bytes refused — and only then are the
tensors handed to safetensors.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

from adaptkit.errors import FormatError, InvalidAdapterError
from adaptkit.fileio import open_regular_file

#: safetensors' own limit for the JSON header; checked before anything is allocated.
MAX_HEADER_BYTES = 100_000_000
FLOAT_DTYPES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64"}


def strict_json(text: str, *, what: str, path: Path) -> Any:
    """``json.loads`` that refuses duplicate keys and ``NaN``/``Infinity`` literals."""

    def no_dupes(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in pairs:
            if k in out:
                raise FormatError(f"duplicate key {k!r} in the {what}", path=path, key=k)
            out[k] = v
        return out

    def no_constants(name: str) -> Any:
        raise FormatError(f"non-finite number {name} in the {what}", path=path)

    try:
        return json.loads(text, object_pairs_hook=no_dupes, parse_constant=no_constants)
    except json.JSONDecodeError as exc:
        raise FormatError(f"{what} is not valid JSON ({exc.msg} at char {exc.pos})", path=path) from None


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
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise FormatError("safetensors header is not UTF-8 JSON", path=p) from None
    header = strict_json(text, what="safetensors header", path=p)
    if not isinstance(header, dict):
        raise FormatError("safetensors header is not a JSON object", path=p)
    return header, prefix + raw


def _read(path: Path, *, whole: bool) -> tuple[dict[str, Any], int, int, bytes]:
    """``(header, header_length, file_size, bytes read)``; the whole file only if ``whole``."""
    fd = open_regular_file(path, what="safetensors file")
    try:
        size = os.fstat(fd).st_size
        with os.fdopen(fd, "rb", closefd=False) as fh:
            header, head = _parse_header(fh, size, path)
            data = head + fh.read() if whole else head
    finally:
        os.close(fd)
    return header, len(head) - 8, size, data


def read_header(path: str | os.PathLike[str]) -> tuple[dict[str, Any], int, int]:
    """Parse a safetensors header strictly, reading only the header.

    Returns:
        ``(header, header_length, file_size)``.

    Raises:
        FormatError: not a regular file, truncated, oversized or malformed header, duplicate
            tensor names.
    """
    header, n, size, _ = _read(Path(path), whole=False)
    return header, n, size


def header_problems(
    header: dict[str, Any], header_len: int, size: int, *, float_only: bool = True
) -> list[str]:
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
        spans.append((start, end, key))
        dtype = info.get("dtype")
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


def read_tensors(
    path: str | os.PathLike[str], *, float_only: bool = True
) -> tuple[dict[str, str], dict[str, Any]]:
    """Read a safetensors file strictly: ``(metadata, tensors)``.

    Raises:
        FormatError: unreadable, not a regular file, malformed header.
        InvalidAdapterError: every header problem at once (offsets, overlaps, trailing
            bytes, non-float dtypes), naming the tensors.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load as st_load

    p = Path(path)
    header, header_len, size, data = _read(p, whole=True)
    problems = header_problems(header, header_len, size, float_only=float_only)
    if problems:
        raise InvalidAdapterError.from_problems(problems, path=p)
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise FormatError("safetensors __metadata__ must map strings to strings", path=p)
    try:
        tensors = st_load(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise FormatError(f"unreadable tensor data: {exc}", path=p) from None
    return meta, tensors
