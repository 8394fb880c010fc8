"""Safe YAML loading: ``yaml.safe_load`` semantics, minus its silent traps.

On top of ``SafeLoader`` this rejects duplicate keys (PyYAML keeps the last one silently),
aliases/anchors (the "billion laughs" expansion bomb; adaptkit files never need them),
nesting deeper than :data:`MAX_DEPTH`, and files larger than :data:`MAX_BYTES`. Python tags
(``!!python/object/apply``) are refused by ``SafeLoader`` itself.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from adaptkit.errors import YamlError

MAX_BYTES = 1 << 20
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


def load_yaml_file(path: str | os.PathLike[str]) -> Any:
    """Read and parse a YAML file (regular file, size-capped, UTF-8)."""
    p = Path(path)
    from adaptkit.fileio import read_regular_file

    data = read_regular_file(p, max_bytes=MAX_BYTES, what="YAML file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise YamlError(f"not UTF-8 text (byte {exc.start})", path=p) from None
    return loads_yaml(text, source=p)
