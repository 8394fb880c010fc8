"""Safe YAML loading: ``yaml.safe_load`` semantics, minus its silent traps.

On top of ``SafeLoader`` this rejects duplicate keys (PyYAML keeps the last one silently),
keys that are lists or mappings (unhashable in Python), ``.nan``/``.inf``,
aliases/anchors (the "billion laughs" expansion bomb; adaptkit files never need them),
nesting deeper than :data:`MAX_DEPTH`, and files larger than :data:`MAX_BYTES`. Python tags
(``!!python/object/apply``) are refused by ``SafeLoader`` itself.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import yaml

from adaptkit.errors import YamlError

#: A recipe listing 4,000 adapters fits; PyYAML parses ~0.5 MB/s, so this bounds a parse to ~1 s.
MAX_BYTES = 256 << 10
MAX_DEPTH = 32


class _StrictLoader(yaml.SafeLoader):
    _depth = 0

    def compose_node(self, parent, index):  # type: ignore[override]
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.MarkedYAMLError(
                None, None, "aliases (*name) are not allowed in adaptkit files", event.start_mark
            )
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise yaml.MarkedYAMLError(
                None, None, f"nesting deeper than {MAX_DEPTH} levels", self.peek_event().start_mark
            )
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):  # type: ignore[override]
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise yaml.MarkedYAMLError(
                    None,
                    None,
                    "a mapping key must be a plain value, not a list or mapping",
                    key_node.start_mark,
                )
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.MarkedYAMLError(
                    None,
                    None,
                    f"duplicate key {key!r} (first on line {seen[key]})",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def _finite_float(loader: _StrictLoader, node: yaml.Node) -> float:
    value = yaml.SafeLoader.construct_yaml_float(loader, node)
    if not math.isfinite(value):
        raise yaml.MarkedYAMLError(
            None,
            None,
            f"non-finite number {node.value!r} (adaptkit files need finite numbers)",
            node.start_mark,
        )
    return value


_StrictLoader.add_constructor("tag:yaml.org,2002:float", _finite_float)


def loads_yaml(text: str, *, source: str | os.PathLike[str] | None = None) -> Any:
    """Parse one YAML document from ``text`` with the strict rules above.

    Raises:
        YamlError: naming ``source`` and the line of the problem.
    """
    if len(text.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        raise YamlError(f"larger than {MAX_BYTES} bytes", path=source)
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}: " if mark is not None else ""
        what = exc.problem or exc.context or "invalid YAML"
        raise YamlError(f"{where}{what}", path=source) from None
    except yaml.YAMLError as exc:
        raise YamlError(" ".join(str(exc).split()), path=source) from None


#: Parsed documents by file identity; a file read twice in one run is parsed once.
_PARSED: dict[tuple[int, int, int, int], Any] = {}
_PARSED_LIMIT = 64


def load_yaml_file(path: str | os.PathLike[str]) -> Any:
    """Read and parse a YAML file (regular file, size-capped, UTF-8).

    A run often meets one file twice (``combine`` asks what kind of YAML a SPEC is, then
    reads it as that kind): the parse is remembered by the file's identity (device, inode,
    size, modification time), and each caller gets its own copy.
    """
    import copy

    from adaptkit.io.fileio import open_regular_file

    p = Path(path)
    fd = open_regular_file(p, what="YAML file")
    try:
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if key in _PARSED:
            return copy.deepcopy(_PARSED[key])
        if st.st_size > MAX_BYTES:
            raise YamlError(f"larger than {MAX_BYTES} bytes", path=p)
        with os.fdopen(fd, "rb", closefd=False) as fh:
            data = fh.read(MAX_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_BYTES:
        raise YamlError(f"larger than {MAX_BYTES} bytes", path=p)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise YamlError(f"not UTF-8 text (byte {exc.start})", path=p) from None
    doc = loads_yaml(text, source=p)
    if len(_PARSED) >= _PARSED_LIMIT:
        _PARSED.clear()
    _PARSED[key] = doc
    return copy.deepcopy(doc)
