"""Combine recipes (``adapters: [...]``, ``strategy``, ``params``, ``rank``, ``seed``, ...).

A recipe names its adapters by path relative to the recipe file, either as SPEC strings or
as inline manifests (``adapter`` / ``weight`` / ``name``). Paths a recipe *writes*
(``output``) must stay inside the recipe's own folder (symlinks resolved), so a downloaded
recipe cannot write anywhere else; ``-o`` on the command line or ``allow_outside`` lifts that.
What may be written there is up to :mod:`adaptkit.io.output_guard` (no ``.pth``, no dotfiles).

This module only reads and checks the YAML: combining a recipe (``tune:`` included) is
:mod:`adaptkit.combine.job`'s, the one path both ``adaptkit combine`` and ``adaptkit export`` take.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adaptkit.errors import AdaptkitError, OutputError
from adaptkit.io.specs import AdapterRef, check_input_path, is_yaml, read_adapter_yaml


@dataclass
class Recipe:
    """A parsed recipe; ``None`` fields mean "not set" (defaults or flags apply)."""

    path: Path | None
    adapters: list[AdapterRef]
    strategy: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    rank: int | str | None = None
    seed: int | None = None
    intersect: bool | None = None
    output: Path | None = None
    to: str | None = None
    tune: dict[str, Any] | None = None

    @property
    def reads(self) -> tuple[Path, ...]:
        """Every file this recipe reads: itself, the manifests it names and their adapters."""
        found = [self.path, *(p for r in self.adapters for p in (r.spec, r.path))]
        return tuple(dict.fromkeys(p for p in found if p is not None))


def _inside(path: Path, root: Path) -> bool:
    from adaptkit.io.fileio import is_within

    return is_within(path, root)


def resolve_output(raw: str, recipe_path: Path, *, allow_outside: bool) -> Path:
    """The recipe's ``output`` as a path, refusing ones that escape (see module docstring)."""
    check_input_path(raw, source=recipe_path, key="output")
    base = recipe_path.parent
    out = Path(raw) if os.path.isabs(raw) else base / raw
    if not allow_outside and not _inside(out, base):
        raise OutputError(
            f"output {raw!r} points outside the recipe's folder",
            path=recipe_path,
            key="output",
            hint="pass -o on the command line, or --allow-outside if you trust this recipe",
        )
    return out


def load_recipe(path: str | os.PathLike[str], *, allow_outside: bool = False) -> Recipe:
    """Read and validate a recipe YAML (every schema problem reported at once)."""
    from adaptkit.io.schemas import validate_document
    from adaptkit.io.yamlio import load_yaml_file

    p = Path(path)
    doc = load_yaml_file(p)
    validate_document(doc, "recipe", path=p)
    refs = []
    for i, item in enumerate(doc["adapters"]):
        key = f"adapters[{i}]"
        raw = item if isinstance(item, str) else item["adapter"]
        check_input_path(raw, source=p, key=key)
        target = Path(raw) if os.path.isabs(raw) else p.parent / raw
        if isinstance(item, str):
            if is_yaml(target):
                if yaml_kind(target) == "recipe":
                    raise AdaptkitError("a recipe cannot include another recipe", path=p, key=key)
                ref = read_adapter_yaml(target)
            else:
                ref = AdapterRef(path=target, name=target.stem if target.suffix else target.name, spec=target)
        else:
            ref = AdapterRef(
                path=target,
                weight=float(item.get("weight", 1.0)),
                name=item.get("name") or (target.stem if target.suffix else target.name),
                spec=p,
            )
        refs.append(ref)
    return Recipe(
        path=p,
        adapters=refs,
        strategy=doc.get("strategy"),
        params=dict(doc.get("params") or {}),
        rank=doc.get("rank"),
        seed=doc.get("seed"),
        intersect=doc.get("intersect"),
        output=resolve_output(doc["output"], p, allow_outside=allow_outside) if "output" in doc else None,
        to=doc.get("to"),
        tune=_tune_block(doc.get("tune"), p),
    )


def _tune_block(block: dict[str, Any] | None, p: Path) -> dict[str, Any] | None:
    """The recipe's ``tune:`` block with set paths (and a local model path) made absolute."""
    if block is None:
        return None
    out = dict(block)
    sets = []
    for i, raw in enumerate(block["sets"]):
        check_input_path(raw, source=p, key=f"tune.sets[{i}]")
        sets.append(str(Path(raw) if os.path.isabs(raw) else p.parent / raw))
    out["sets"] = sets
    local = p.parent / block["model"]
    if local.exists():
        out["model"] = str(local)
    return out


def yaml_kind(path: Path) -> str:
    """``"recipe"``, ``"adapter-spec"`` or ``"unknown"`` for a YAML file (by its keys)."""
    from adaptkit.io.yamlio import load_yaml_file

    doc = load_yaml_file(path)
    if isinstance(doc, dict) and "adapters" in doc:
        return "recipe"
    if isinstance(doc, dict) and "adapter" in doc:
        return "adapter-spec"
    return "unknown"
