"""The flags of ``adaptkit export``, and which exporter declarations can become them.

``adaptkit export`` has the host's own flags (:data:`HOST_FLAGS`), one selector ``--NAME`` per
registered exporter, and one flag per option an exporter declares in its ``options_schema``
(two for a nullable boolean: ``--KEY`` and ``--no-KEY``;
:func:`adaptkit.plugins.options.option_flags`). One command line has one meaning per flag, so a
declaration is refused when:

* it is incomplete (:func:`adaptkit.plugins.options.schema_problems`);
* its selector or one of its option flags is a host flag (an exporter named ``json`` or
  ``force``), or a flag another exporter already takes (its selector, or an option with a
  *different* key that comes out as the same flag: ``no_verify`` defaulting to false is
  ``--no-verify``, ONNX's flag for ``verify``), or another of its own flags;
* it shares an option key with an exporter already registered, but not the option's flags and
  value: two exporters may share a key only when it is the same switch, or the same kind of value
  (the same type and the same choices, which ``--help`` shows once); each exporter's own
  property still checks the value (bounds, defaults and descriptions may differ).

The registry applies :meth:`ExportFlags.add` when a plugin registers an exporter
(:mod:`adaptkit.plugins.registry`): the *newcomer* is refused and its plugin reported as failed
to load (``adaptkit plugins``), and every other exporter keeps its flags. adaptkit's own plugins
register first, so a third-party exporter can never take a builtin's flag away. The export host
builds its flags from the same table (:func:`adaptkit.exporting.exporter_options`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from adaptkit.errors import PluginError
from adaptkit.plugins.options import declared_types, option_flags, schema_problems

#: Flags ``adaptkit export`` owns; no exporter option or exporter name may take them.
HOST_FLAGS = frozenset(
    {"--model", "-a", "--adapter", "-o", "--output", "-f", "--force", "--json", "--exporter", "-h", "--help"}
)

#: What to do about a refused exporter.
REFUSED_HINT = "each flag of adaptkit export must mean one thing; rename the exporter or the option"


def selector(name: str) -> str:
    """The flag that picks exporter ``name`` (``merged`` → ``--merged``)."""
    return "--" + name.replace("_", "-")


def metavar(spec: Mapping[str, Any]) -> str | None:
    """What ``--help`` shows after a valued option's flag (``INT``, ``[a|b]``); ``None`` for a
    switch, which takes no value."""
    kinds, _ = declared_types(spec)
    if kinds == ("boolean",):
        return None
    if "enum" in spec:
        return "[" + "|".join(str(v) for v in spec["enum"] if v is not None) + "]"
    return {"integer": "INT", "number": "FLOAT"}.get(kinds[0] if kinds else "", "TEXT")


@dataclass(frozen=True)
class ExportOption:
    """One option of ``adaptkit export``, with every exporter that declares it.

    Attributes:
        key: The option's key in ``options_schema`` and ``request.options``.
        flags: Its flags (:func:`adaptkit.plugins.options.option_flags`): one, or ``--KEY`` and
            ``--no-KEY`` for a nullable boolean.
        specs: ``exporter name -> property`` for every exporter that declares it.
    """

    key: str
    flags: tuple[str, ...]
    specs: Mapping[str, Mapping[str, Any]]

    @property
    def flag(self) -> str:
        """How messages name it: ``--opset``, or ``--keep/--no-keep`` for a two-way switch."""
        return "/".join(self.flags)

    @property
    def is_switch(self) -> bool:
        """A boolean: its flags take no value (``--lora-inputs``, ``--no-verify``)."""
        return self.metavar is None

    @property
    def two_way(self) -> bool:
        """A nullable boolean: ``--KEY`` sets true, ``--no-KEY`` false, neither leaves ``None``."""
        return len(self.flags) == 2

    @property
    def metavar(self) -> str | None:
        """What ``--help`` shows after the flag (the same for every exporter that declares it)."""
        return metavar(next(iter(self.specs.values())))


def _shown(flags: Iterable[str], mv: str | None) -> str:
    return "/".join(flags) + ("" if mv is None else f" {mv}")


class ExportFlags:
    """The flags of ``adaptkit export`` so far: the host's, then each exporter :meth:`add` took."""

    def __init__(self) -> None:
        #: ``option key -> ExportOption``, in the order the exporters were added.
        self.options: dict[str, ExportOption] = {}
        self._owner: dict[str, str] = dict.fromkeys(HOST_FLAGS, "a flag of adaptkit export itself")

    def problems(self, name: str, schema: Any) -> list[str]:
        """Why exporter ``name`` with ``schema`` cannot join (empty: it can)."""
        incomplete = schema_problems(schema)
        if incomplete:
            return ["incomplete options: " + "; ".join(incomplete)]
        problems = []
        own = selector(name)
        if own in self._owner:
            problems.append(f"its selector {own} is {self._owner[own]}")
        mine: dict[str, str] = {own: "its own selector"}
        for key, spec in schema["properties"].items():
            flags, mv = option_flags(key, spec), metavar(spec)
            seen = self.options.get(key)
            if seen is not None and (seen.flags != flags or seen.metavar != mv):
                first = next(iter(seen.specs))
                problems.append(
                    f"option {key!r} ({_shown(flags, mv)}) differs from option {key!r} of exporter "
                    f"{first!r} ({_shown(seen.flags, seen.metavar)}): one key is one flag, "
                    "so exporters sharing it must declare the same type and choices"
                )
                continue
            for flag in flags:  # a shared key (seen) brings its flags along: they are its own
                if flag in mine:
                    problems.append(f"option {key!r} would be {flag}, which is {mine[flag]}")
                elif seen is None and flag in self._owner:
                    problems.append(f"option {key!r} would be {flag}, which is {self._owner[flag]}")
                mine[flag] = f"its own option {key!r}"
        return problems

    def add(self, name: str, schema: Any, *, plugin: str) -> None:
        """Take exporter ``name``'s selector and option flags.

        Raises:
            PluginError: naming the plugin and the exporter, with every problem
                (:meth:`problems`); nothing is taken then.
        """
        problems = self.problems(name, schema)
        if problems:
            raise PluginError(
                f"plugin {plugin!r}: exporter {name!r} refused: " + "; ".join(problems),
                hint=REFUSED_HINT,
            )
        who = f"exporter {name!r} (plugin {plugin!r})"
        self._owner[selector(name)] = f"the selector of {who}"
        for key, spec in schema["properties"].items():
            flags = option_flags(key, spec)
            seen = self.options.get(key)
            specs = {**(seen.specs if seen else {}), name: spec}
            self.options[key] = ExportOption(key, flags, specs)
            for flag in flags:
                self._owner.setdefault(flag, f"option {key!r} of {who}")
