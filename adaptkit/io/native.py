"""The native adapter file: one ``.safetensors`` file with a JSON manifest in its metadata.

Layout::

    8 bytes        little-endian u64 N: header length
    N bytes        JSON header: {"__metadata__": {"adaptkit": "<manifest JSON>", ...},
                                 "<module>.lora_A.weight": {dtype, shape, data_offsets}, ...}
    rest           tensor bytes

The manifest (schema ``schemas/adapter-manifest.schema.json``) carries the format version,
per-target rank / alpha / scaling mode, the base-model identity, the producer and provenance.

Reading goes through :mod:`adaptkit.io.safetensors_strict` (duplicate names, offsets, header
size and trailing bytes checked before safetensors sees the file).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from adaptkit.adapter import (
    Adapter,
    BaseModelInfo,
    Producer,
    SavedModule,
    TrainableTokens,
    saved_module_problems,
    token_problems,
)
from adaptkit.errors import FormatError, InvalidAdapterError, OutputError
from adaptkit.io.jsonio import strict_json
from adaptkit.io.safetensors_strict import read_header, read_tensors
from adaptkit.lora import LoraPair

#: The safetensors metadata key that holds the manifest.
MANIFEST_KEY = "adaptkit"
#: The tensor under a module holding its trainable tokens' rows.
TOKENS_TENSOR = "trainable_tokens"

_TENSOR_KEY = re.compile(
    r"^(?P<module>.+)\.(?P<name>lora_A\.weight|lora_B\.weight|lora_B\.bias|lora_magnitude_vector)$"
)
#: Manifest flag of a target -> the extra tensor it declares and the LoraPair field holding it.
_EXTRAS = {"bias": ("lora_B.bias", "bias"), "dora": ("lora_magnitude_vector", "magnitude")}


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The adaptkit manifest of a safetensors file, or ``None`` if it has none."""
    p = Path(path)
    header, _, _ = read_header(p)
    return _manifest_from_metadata(header.get("__metadata__"), p)


def _manifest_from_metadata(meta: Any, p: Path) -> dict[str, Any] | None:
    if not isinstance(meta, dict) or MANIFEST_KEY not in meta:
        return None
    raw = meta[MANIFEST_KEY]
    if not isinstance(raw, str):
        raise FormatError("manifest metadata must be a JSON string", path=p, key=MANIFEST_KEY)
    return strict_json(raw, what="adaptkit manifest", path=p)


def is_native_adapter(path: str | os.PathLike[str]) -> bool:
    """Cheap check: a regular file whose safetensors metadata holds an adaptkit manifest.

    Any ``*.safetensors`` file counts as ours, so that loading it reports what is wrong with
    it (a corrupt header, or no manifest — e.g. a PEFT weights file given without its folder).
    """
    p = Path(path)
    if not p.is_file():
        return False
    if p.suffix == ".safetensors":
        return True
    try:
        return read_manifest(p) is not None
    except FormatError:
        return False


def load_adapter(path: str | os.PathLike[str]) -> Adapter:
    """Load a native adapter file, checking everything before returning.

    Rejects (with :class:`FormatError` or :class:`InvalidAdapterError` naming the file and the
    tensor/key): non-regular files, oversized or truncated headers, duplicate tensor names,
    offsets out of bounds, overlapping or trailing data, a missing or schema-invalid
    manifest, non-float dtypes, a factor without its pair, tensors the manifest does not
    list (and vice versa), ranks disagreeing with the manifest, NaN/Inf values.
    """
    from adaptkit.io.schemas import schema_problems

    p = Path(path)
    meta, tensors = read_tensors(p)
    manifest = _manifest_from_metadata(meta, p)
    if manifest is None:
        raise FormatError(
            "not an adaptkit adapter: no 'adaptkit' manifest in the safetensors metadata",
            path=p,
            hint="for a PEFT adapter pass its directory; `adaptkit convert` writes native files",
        )
    problems = [f"manifest {m}" for m in schema_problems(manifest, "adapter-manifest")]
    if problems:
        raise InvalidAdapterError.from_problems(problems, path=p)
    return _assemble(p, manifest, tensors)


def _assemble(p: Path, manifest: dict[str, Any], tensors: dict[str, Any]) -> Adapter:
    problems: list[str] = []
    factors: dict[str, dict[str, Any]] = {}
    tensors = dict(tensors)
    saved: dict[str, SavedModule] = {}
    for module, entry in sorted((manifest.get("saved_modules") or {}).items()):
        params = {}
        for param in entry["params"]:
            tensor = tensors.pop(f"{module}.{param}", None)
            if tensor is None:
                problems.append(f"{module}.{param}: listed as a saved module's tensor but missing")
            else:
                params[param] = tensor
        saved[module] = SavedModule(params=params, origin=entry["origin"])
    tokens: dict[str, TrainableTokens] = {}
    for module, entry in sorted((manifest.get("trainable_tokens") or {}).items()):
        values = tensors.pop(f"{module}.{TOKENS_TENSOR}", None)
        if values is None:
            problems.append(f"{module}.{TOKENS_TENSOR}: listed as trainable tokens but missing")
        else:
            tokens[module] = TrainableTokens(indices=list(entry["indices"]), values=values)
    for key, tensor in tensors.items():
        m = _TENSOR_KEY.match(key)
        if not m:
            problems.append(f"{key}: unexpected tensor (expected '<module>.lora_A/B.weight')")
            continue
        factors.setdefault(m["module"], {})[m["name"]] = tensor
    declared = manifest["targets"]
    for module in sorted(set(factors) - set(declared)):
        problems.append(f"{module}: tensors present but not listed in the manifest")
    for module in sorted(set(declared) - set(factors)):
        problems.append(f"{module}: listed in the manifest but has no tensors")

    targets: dict[str, LoraPair] = {}
    for module in sorted(set(factors) & set(declared)):
        pair_tensors = factors[module]
        missing = [f for f in ("lora_A.weight", "lora_B.weight") if f not in pair_tensors]
        if missing:
            problems.append(f"{module}.{missing[0]}: missing (its pair is present)")
            continue
        entry = declared[module]
        extras, bad = {}, False
        for flag, (name, field) in _EXTRAS.items():
            if entry.get(flag, False) != (name in pair_tensors):
                listed = "declares" if entry.get(flag) else "does not declare"
                problems.append(f"{module}.{name}: the manifest {listed} {flag}: true, the tensors disagree")
                bad = True
            elif name in pair_tensors:
                extras[field] = pair_tensors[name]
        if bad:
            continue
        A, B = pair_tensors["lora_A.weight"], pair_tensors["lora_B.weight"]
        if A.ndim >= 2 and A.shape[-2] != entry["rank"]:
            problems.append(
                f"{module}.lora_A.weight: shape {tuple(A.shape)} disagrees with manifest rank {entry['rank']}"
            )
            continue
        try:
            pair = LoraPair(
                A=A,
                B=B,
                alpha=entry.get("alpha"),
                scaling=entry["scaling"],
                explicit_scale=entry.get("scale"),
                kind=entry.get("kind", "linear"),
                **extras,
            )
        except InvalidAdapterError as exc:
            problems.append(f"{module}: {exc.message}")
            continue
        problems += [f"{module}.{label}: contains NaN or Inf values" for label in pair.check_finite()]
        targets[module] = pair
    problems += saved_module_problems(saved, check_values=True)
    problems += token_problems(tokens, check_values=True)
    if problems:
        raise InvalidAdapterError.from_problems(problems, path=p)

    base = manifest.get("base_model") or {}
    producer = manifest.get("producer") or {}
    return Adapter(
        targets=targets,
        base_model=BaseModelInfo(
            name=base.get("name"),
            revision=base.get("revision"),
            fan_in_fan_out=base.get("fan_in_fan_out"),
        ),
        producer=Producer(
            name=producer.get("name", "adaptkit"),
            version=producer.get("version"),
            component=producer.get("component"),
        ),
        provenance=manifest.get("provenance") or {},
        format_version=manifest["format_version"],
        saved=saved,
        tokens=tokens,
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
        if pair.kind != "linear":  # linear is the default: plain adapters' bytes do not change
            entry["kind"] = pair.kind
        for flag, (_, field) in _EXTRAS.items():
            if getattr(pair, field) is not None:
                entry[flag] = True
        targets[name] = entry
    manifest: dict[str, Any] = {
        "format": "adaptkit.lora",
        "format_version": adapter.format_version,
        "targets": targets,
        "base_model": {k: v for k, v in vars(adapter.base_model).items() if v is not None},
        "producer": {k: v for k, v in vars(adapter.producer).items() if v is not None},
        "provenance": adapter.provenance,
    }
    if adapter.saved:
        manifest["saved_modules"] = {
            m: {"params": sorted(e.params), "origin": e.origin} for m, e in sorted(adapter.saved.items())
        }
    if adapter.tokens:
        manifest["trainable_tokens"] = {
            m: {"indices": list(e.indices)} for m, e in sorted(adapter.tokens.items())
        }
    return manifest


def adapter_to_bytes(adapter: Adapter) -> bytes:
    """Serialise ``adapter`` to the bytes of a native file (validating it first)."""
    from safetensors.torch import save as st_save

    from adaptkit.io.schemas import validate_document

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
        for label, tensor in pair.tensors().items():
            tensors[f"{name}.{label}"] = tensor.detach().contiguous().cpu()
    for module, entry in sorted(adapter.saved.items()):
        for param, tensor in sorted(entry.params.items()):
            key = f"{module}.{param}"
            if key in tensors:
                raise InvalidAdapterError(f"saved module tensor {key!r} collides with a LoRA factor's name")
            tensors[key] = tensor.detach().contiguous().cpu()
    for module, entry in sorted(adapter.tokens.items()):
        key = f"{module}.{TOKENS_TENSOR}"
        if key in tensors:
            raise InvalidAdapterError(f"trainable tokens tensor {key!r} collides with another tensor's name")
        tensors[key] = entry.values.detach().contiguous().cpu()
    tensors = unshared(tensors)
    # A single metadata key: safetensors writes metadata from a hash map, so several keys
    # would come out in a random order and identical adapters would differ in bytes.
    return st_save(tensors, metadata={MANIFEST_KEY: text})


def unshared(tensors: dict[str, Any]) -> dict[str, Any]:
    """``tensors`` with any storage used twice copied (safetensors refuses shared memory, e.g.
    two targets holding the very same factor tensors)."""
    seen: set[tuple[int, int]] = set()
    out = {}
    for key, tensor in tensors.items():
        span = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        out[key] = tensor.clone() if span in seen and tensor.numel() else tensor
        seen.add(span)
    return out


def save_adapter(adapter: Adapter, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Validate and write ``adapter`` to ``path`` atomically.

    Nothing is written if validation fails; an existing file is replaced only when
    ``overwrite`` is true, and only by a complete new file.
    """
    from adaptkit.io.atomic import atomic_write_bytes

    p = Path(path)
    if p.is_dir():
        raise OutputError("output is a directory; expected a .safetensors file path", path=p)
    if os.path.lexists(p) and not overwrite:
        raise OutputError("output exists", path=p, hint="pass --force / overwrite=True to replace it")
    data = adapter_to_bytes(adapter)
    atomic_write_bytes(p, data, replace=overwrite)
    return p
