"""The native adapter file: one ``.safetensors`` file with a JSON manifest in its metadata.

Layout::

    8 bytes        little-endian u64 N: header length
    N bytes        JSON header: {"__metadata__": {"adaptkit": "<manifest JSON>", ...},
                                 "<module>.lora_A.weight": {dtype, shape, data_offsets}, ...}
    rest           tensor bytes

The manifest (schema ``schemas/adapter-manifest.schema.json``) carries the format version,
per-target rank / alpha / scaling mode, the base-model identity, the producer and provenance.

safetensors' own parser accepts duplicate tensor names (last wins) and NaN values, so the
header is parsed here first with stricter rules, before safetensors reads the tensors.
"""

from __future__ import annotations

import json
import os
import re
import struct
from pathlib import Path
from typing import Any

from adaptkit.adapter import Adapter, BaseModelInfo, Producer
from adaptkit.errors import FormatError, InvalidAdapterError, OutputError
from adaptkit.fileio import open_regular_file
from adaptkit.lora import LoraPair

#: safetensors' own limit for the JSON header; checked before anything is allocated.
MAX_HEADER_BYTES = 100_000_000
#: The safetensors metadata key that holds the manifest.
MANIFEST_KEY = "adaptkit"

_TENSOR_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<factor>[AB])\.weight$")
_ST_DTYPES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64"}


def _strict_json(text: str, *, what: str, path: Path) -> Any:
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
        raise FormatError(
            f"{what} is not valid JSON ({exc.msg} at char {exc.pos})", path=path
        ) from None


def _parse_header(fh: Any, size: int, p: Path) -> tuple[dict[str, Any], bytes]:
    """Read and parse the header from ``fh`` (at offset 0); return it and the raw bytes read."""
    prefix = fh.read(8)
    if len(prefix) < 8:
        raise FormatError(f"too small to be a safetensors file ({size} bytes)", path=p)
    (n,) = struct.unpack("<Q", prefix)
    if n > MAX_HEADER_BYTES:
        raise FormatError(
            f"safetensors header length {n} exceeds the {MAX_HEADER_BYTES}-byte cap", path=p
        )
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
    header = _strict_json(text, what="safetensors header", path=p)
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


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The adaptkit manifest of a safetensors file, or ``None`` if it has none."""
    p = Path(path)
    header, _, _ = read_header(p)
    return _manifest_from_header(header, p)


def _manifest_from_header(header: dict[str, Any], p: Path) -> dict[str, Any] | None:
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict) or MANIFEST_KEY not in meta:
        return None
    raw = meta[MANIFEST_KEY]
    if not isinstance(raw, str):
        raise FormatError("manifest metadata must be a JSON string", path=p, key=MANIFEST_KEY)
    manifest = _strict_json(raw, what="adaptkit manifest", path=p)
    return manifest


def is_native_adapter(path: str | os.PathLike[str]) -> bool:
    """Cheap check: a regular file whose safetensors metadata holds an adaptkit manifest."""
    p = Path(path)
    if not p.is_file():
        return False
    try:
        return read_manifest(p) is not None
    except FormatError:
        # Still ours if it *looks* like one (so the real error is reported on load).
        return p.suffix == ".safetensors"


def _header_problems(header: dict[str, Any], header_len: int, size: int) -> list[str]:
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
            problems.append(
                f"{key}: data_offsets {offsets!r} out of bounds (data is {data_len} bytes)"
            )
            continue
        spans.append((start, end, key))
        dtype = info.get("dtype")
        if dtype not in _ST_DTYPES:
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


def load_adapter(path: str | os.PathLike[str]) -> Adapter:
    """Load a native adapter file, checking everything before returning.

    Rejects (with :class:`FormatError` or :class:`InvalidAdapterError` naming the file and the
    tensor/key): non-regular files, oversized or truncated headers, duplicate tensor names,
    offsets out of bounds, overlapping or trailing data, a missing or schema-invalid
    manifest, non-float dtypes, a factor without its pair, tensors the manifest does not
    list (and vice versa), ranks disagreeing with the manifest, NaN/Inf values.
    """
    from adaptkit.schemas import schema_problems

    p = Path(path)
    header, header_len, size, data = _read(p, whole=True)
    manifest = _manifest_from_header(header, p)
    if manifest is None:
        raise FormatError(
            "not an adaptkit adapter: no 'adaptkit' manifest in the safetensors metadata",
            path=p,
            hint="for a PEFT adapter pass its directory; `adaptkit convert` writes native files",
        )
    problems = [f"manifest {m}" for m in schema_problems(manifest, "adapter-manifest")]
    problems += _header_problems(header, header_len, size)
    if problems:
        raise InvalidAdapterError.from_problems(problems, path=p)

    from safetensors import SafetensorError
    from safetensors.torch import load as st_load

    try:
        tensors = st_load(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise FormatError(f"unreadable tensor data: {exc}", path=p) from None
    return _assemble(p, manifest, tensors)


def _assemble(p: Path, manifest: dict[str, Any], tensors: dict[str, Any]) -> Adapter:
    problems: list[str] = []
    factors: dict[str, dict[str, Any]] = {}
    for key, tensor in tensors.items():
        m = _TENSOR_KEY.match(key)
        if not m:
            problems.append(f"{key}: unexpected tensor (expected '<module>.lora_A/B.weight')")
            continue
        factors.setdefault(m["module"], {})[m["factor"]] = tensor
    declared = manifest["targets"]
    for module in sorted(set(factors) - set(declared)):
        problems.append(f"{module}: tensors present but not listed in the manifest")
    for module in sorted(set(declared) - set(factors)):
        problems.append(f"{module}: listed in the manifest but has no tensors")

    targets: dict[str, LoraPair] = {}
    for module in sorted(set(factors) & set(declared)):
        pair_tensors = factors[module]
        missing = [f"lora_{f}" for f in "AB" if f not in pair_tensors]
        if missing:
            problems.append(f"{module}.{missing[0]}.weight: missing (its pair is present)")
            continue
        entry = declared[module]
        A, B = pair_tensors["A"], pair_tensors["B"]
        if A.ndim == 2 and A.shape[0] != entry["rank"]:
            problems.append(
                f"{module}.lora_A.weight: shape {tuple(A.shape)} disagrees with manifest rank "
                f"{entry['rank']}"
            )
            continue
        try:
            pair = LoraPair(
                A=A,
                B=B,
                alpha=entry.get("alpha"),
                scaling=entry["scaling"],
                explicit_scale=entry.get("scale"),
            )
        except InvalidAdapterError as exc:
            problems.append(f"{module}: {exc.message}")
            continue
        problems += [
            f"{module}.{label}.weight: contains NaN or Inf values" for label in pair.check_finite()
        ]
        targets[module] = pair
    if problems:
        raise InvalidAdapterError.from_problems(problems, path=p)

    base = manifest.get("base_model") or {}
    producer = manifest.get("producer") or {}
    return Adapter(
        targets=targets,
        base_model=BaseModelInfo(name=base.get("name"), revision=base.get("revision")),
        producer=Producer(
            name=producer.get("name", "adaptkit"),
            version=producer.get("version"),
            component=producer.get("component"),
        ),
        provenance=manifest.get("provenance") or {},
        format_version=manifest["format_version"],
    )


def build_manifest(adapter: Adapter) -> dict[str, Any]:
    """The manifest dict written into an adapter file's metadata."""
    targets: dict[str, Any] = {}
    for name in sorted(adapter.targets):
        pair = adapter.targets[name]
        entry: dict[str, Any] = {"rank": pair.rank, "scaling": pair.scaling}
        if pair.scaling == "explicit":
            entry["scale"] = pair.explicit_scale
        else:
            entry["alpha"] = pair.alpha
        targets[name] = entry
    manifest: dict[str, Any] = {
        "format": "adaptkit.lora",
        "format_version": adapter.format_version,
        "targets": targets,
        "base_model": {k: v for k, v in vars(adapter.base_model).items() if v is not None},
        "producer": {k: v for k, v in vars(adapter.producer).items() if v is not None},
        "provenance": adapter.provenance,
    }
    return manifest


def adapter_to_bytes(adapter: Adapter) -> bytes:
    """Serialise ``adapter`` to the bytes of a native file (validating it first)."""
    from safetensors.torch import save as st_save

    from adaptkit.schemas import validate_document

    adapter.validate()
    manifest = build_manifest(adapter)
    validate_document(manifest, "adapter-manifest")
    try:
        text = json.dumps(manifest, sort_keys=True, allow_nan=False, separators=(",", ":"))
    except ValueError as exc:
        raise InvalidAdapterError(f"manifest is not JSON-safe: {exc}") from None
    tensors = {}
    # Sorted insertion makes the bytes independent of the order targets were added in.
    for name, pair in sorted(adapter.targets.items()):
        tensors[f"{name}.lora_A.weight"] = pair.A.detach().contiguous().cpu()
        tensors[f"{name}.lora_B.weight"] = pair.B.detach().contiguous().cpu()
    # A single metadata key: safetensors writes metadata from a hash map, so several keys
    # would come out in a random order and identical adapters would differ in bytes.
    return st_save(tensors, metadata={MANIFEST_KEY: text})


def save_adapter(
    adapter: Adapter, path: str | os.PathLike[str], *, overwrite: bool = False
) -> Path:
    """Validate and write ``adapter`` to ``path`` atomically.

    Nothing is written if validation fails; an existing file is replaced only when
    ``overwrite`` is true, and only by a complete new file.
    """
    from adaptkit.atomic import atomic_write_bytes

    p = Path(path)
    if p.exists() and not overwrite:
        raise OutputError(
            "output exists", path=p, hint="pass --force / overwrite=True to replace it"
        )
    if p.is_dir():
        raise OutputError("output is a directory; expected a .safetensors file path", path=p)
    data = adapter_to_bytes(adapter)
    atomic_write_bytes(p, data)
    return p
