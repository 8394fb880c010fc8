"""SPEC arguments: what the user points adaptkit at, resolved to adapters.

A SPEC is one of

* an adapter path that a registered format detects (native ``.safetensors`` file, a PEFT
  directory once that plugin is installed, ...);
* an adapter manifest YAML (schema ``adapter-spec``)::

      adapter: lora/a.safetensors   # relative to this YAML
      weight: 0.5                   # optional, default 1.0
      name: skill-a                 # optional, default: the file name
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from adaptkit.errors import AdaptkitError, FormatError

if TYPE_CHECKING:
    from adaptkit.adapter import Adapter
    from adaptkit.plugins import Registration, Registry

YAML_SUFFIXES = (".yaml", ".yml")
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")


@dataclass
class AdapterRef:
    """One adapter to use, and how much of it.

    Attributes:
        path: The adapter itself (file or directory).
        weight: Multiplier of its update.
        name: Label for reports.
        spec: What the user wrote (the YAML file, or the adapter path itself).
    """

    path: Path
    weight: float = 1.0
    name: str = ""
    spec: Path | None = None


def check_input_path(raw: str, *, source: Path | None, key: str) -> None:
    """Refuse path strings that are surely mistakes or tricks: NUL bytes, URLs, ``~``."""
    if "\x00" in raw:
        raise AdaptkitError("path contains a NUL byte", path=source, key=key)
    if _URL.match(raw):
        raise AdaptkitError(
            f"{raw!r} is a URL; adaptkit reads local files only",
            path=source,
            key=key,
            hint="download it first with a tool you trust",
        )
    if raw.startswith("~"):
        raise AdaptkitError(
            f"{raw!r} starts with '~', which is not expanded in adaptkit files",
            path=source,
            key=key,
            hint="write the path relative to this file or absolute",
        )


def read_adapter_yaml(path: str | os.PathLike[str]) -> AdapterRef:
    """Load and validate an adapter manifest YAML; its ``adapter`` path is resolved relative
    to the YAML's folder."""
    from adaptkit.io.schemas import validate_document
    from adaptkit.io.yamlio import load_yaml_file

    p = Path(path)
    doc = load_yaml_file(p)
    validate_document(doc, "adapter-spec", path=p)
    check_input_path(doc["adapter"], source=p, key="adapter")
    from adaptkit.io.fileio import real_path

    raw = doc["adapter"]
    target = Path(raw) if os.path.isabs(raw) else real_path(p.parent / raw)
    return AdapterRef(
        path=target,
        weight=float(doc.get("weight", 1.0)),
        name=doc.get("name") or target.stem,
        spec=p,
    )


def is_yaml(path: Path) -> bool:
    return path.suffix.lower() in YAML_SUFFIXES


def detect_format(path: str | os.PathLike[str], registry: Registry) -> Registration:
    """The registered format that recognises ``path``.

    Raises:
        FormatError: nothing exists at ``path``, or no format recognises it (listing them).
    """
    p = Path(path)
    if not p.exists():
        raise FormatError("no such file or directory", path=p)
    for reg in registry.all("format"):
        try:
            if reg.obj.detect(p):
                return reg
        except Exception:  # detect() must not raise; a buggy plugin must not hide others
            continue
    names = ", ".join(registry.names("format")) or "none"
    suffix = "" if p.is_dir() else " (pickled .bin/.pt adapters are never loaded)"
    raise FormatError(f"not a recognised adapter (formats tried: {names}){suffix}", path=p)


def resolve_spec(spec: str | os.PathLike[str]) -> AdapterRef:
    """Turn a command-line SPEC into an :class:`AdapterRef` (reads YAML, not tensors)."""
    raw = os.fspath(spec)
    check_input_path(raw, source=None, key="SPEC")
    p = Path(raw)
    if is_yaml(p):
        return read_adapter_yaml(p)
    return AdapterRef(path=p, name=p.stem if p.suffix else p.name, spec=p)


def load_ref(ref: AdapterRef, registry: Registry | None = None) -> Adapter:
    """Read the adapter a ref points to, through whichever format detects it."""
    from adaptkit.plugins import get_registry

    registry = registry or get_registry()
    reg = detect_format(ref.path, registry)
    return reg.require_available().read(ref.path)


def load_spec(spec: str | os.PathLike[str], registry: Registry | None = None) -> Adapter:
    """Resolve a SPEC and load its adapter (weights are not applied; see the ref)."""
    return load_ref(resolve_spec(spec), registry)
