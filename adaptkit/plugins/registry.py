"""Plugin loading and the registry of what plugins register.

Nothing happens at import time: :func:`load_registry` builds a pluggy ``PluginManager``, loads
the ``adaptkit`` entry points (builtins and third parties alike), validates hook names with
``check_pending()``, then calls each ``register_<things>`` hook *per plugin* so every
registration is attributed to the plugin that made it. A plugin that fails any of these steps
(import, hook names or signatures, a hook that raises) is recorded with the reason and skipped.
So is a plugin whose exporter declares options ``adaptkit export`` cannot turn into flags of
their own (:mod:`adaptkit.plugins.export_flags`): checked as it registers, against the host's
flags and every exporter registered before it, so the newcomer is the one refused. adaptkit's
own plugins register first.

Environment variables:
    ``ADAPTKIT_LOAD_PLUGINS``: comma-separated entry-point names; load only these (an empty
        value loads none).
    ``ADAPTKIT_BLOCK_PLUGINS``: comma-separated entry-point names never to load.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from adaptkit.errors import MissingDependencyError, PluginError, UnknownNameError

LOAD_ENV = "ADAPTKIT_LOAD_PLUGINS"
BLOCK_ENV = "ADAPTKIT_BLOCK_PLUGINS"
_NAME = re.compile(r"^[a-z][a-z0-9_\-]*$")


@dataclass(frozen=True)
class Registration:
    """One registered object and where it came from."""

    kind: str
    name: str
    obj: Any
    plugin: str

    @property
    def missing(self) -> dict[str, str]:
        """``import name -> pip requirement`` for each dependency that is not installed."""
        requires: Mapping[str, str] = getattr(self.obj, "requires", None) or {}
        return {mod: pip for mod, pip in requires.items() if importlib.util.find_spec(mod) is None}

    @property
    def available(self) -> bool:
        return not self.missing

    def require_available(self) -> Any:
        """Return the object, or raise :class:`MissingDependencyError` saying what to install."""
        missing = self.missing
        if missing:
            pkgs = " ".join(sorted(set(missing.values())))
            raise MissingDependencyError(
                f"{self.kind} {self.name!r} (plugin {self.plugin!r}) needs "
                f"{', '.join(sorted(missing))}, which is not installed",
                hint=f"pip install {pkgs}",
            )
        return self.obj


@dataclass
class PluginInfo:
    """A loaded (or failed) plugin, as ``adaptkit plugins`` reports it."""

    name: str
    module: str
    distribution: str | None = None
    version: str | None = None
    hooks: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass
class Registry:
    """Everything the loaded plugins registered, by kind and name."""

    pm: Any
    plugins: dict[str, PluginInfo] = field(default_factory=dict)
    entries: dict[str, dict[str, Registration]] = field(default_factory=dict)

    def names(self, kind: str) -> list[str]:
        return sorted(self.entries.get(kind, {}))

    def registration(self, kind: str, name: str) -> Registration:
        """Look up ``name``; unknown names raise :class:`UnknownNameError` listing valid ones (and
        the plugins that failed to load, which may have been meant to register it)."""
        table = self.entries.get(kind, {})
        if name not in table:
            failed = sorted(n for n, info in self.plugins.items() if info.error)
            hint = f"plugin {', '.join(map(repr, failed))} failed to load; `adaptkit plugins` says why"
            raise UnknownNameError(kind, name, table, hint=hint if failed else None)
        return table[name]

    def get(self, kind: str, name: str) -> Any:
        """The registered object, checked to have its dependencies installed."""
        return self.registration(kind, name).require_available()

    def all(self, kind: str) -> list[Registration]:
        table = self.entries.get(kind, {})
        return [table[n] for n in sorted(table)]

    def registered_by(self, plugin: str) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for kind, table in self.entries.items():
            names = sorted(n for n, r in table.items() if r.plugin == plugin)
            if names:
                out[kind] = names
        return out


def _env_list(env: Mapping[str, str], key: str) -> list[str] | None:
    if key not in env:
        return None
    return [x.strip() for x in env[key].split(",") if x.strip()]


def create_plugin_manager(
    *, env: Mapping[str, str] | None = None, extra: Iterable[tuple[str, Any]] = ()
) -> tuple[Any, dict[str, PluginInfo]]:
    """Build a pluggy manager with the ``adaptkit`` entry points loaded.

    Args:
        env: Environment to read ``ADAPTKIT_LOAD_PLUGINS`` / ``ADAPTKIT_BLOCK_PLUGINS`` from
            (default ``os.environ``).
        extra: ``(name, plugin)`` pairs registered in addition (tests, embedding apps).

    Returns:
        The manager and a :class:`PluginInfo` per plugin, including ones that failed to
        import (their ``error`` says why); a broken plugin never takes the others down.
    """
    import pluggy

    from adaptkit.plugins import hookspecs

    env = os.environ if env is None else env
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    infos: dict[str, PluginInfo] = {}

    eps = {ep.name: ep for ep in importlib.metadata.entry_points(group=hookspecs.PROJECT_NAME)}
    only = _env_list(env, LOAD_ENV)
    blocked = set(_env_list(env, BLOCK_ENV) or [])
    if only is not None:
        unknown = sorted(set(only) - set(eps))
        if unknown:
            raise UnknownNameError("plugin", unknown[0], eps, key=LOAD_ENV)
    for name in sorted(eps):
        if name in blocked or (only is not None and name not in only):
            continue
        ep = eps[name]
        dist = getattr(ep, "dist", None)
        info = PluginInfo(
            name=name,
            module=ep.value,
            distribution=dist.metadata["Name"] if dist is not None else None,
            version=dist.version if dist is not None else None,
        )
        infos[name] = info
        try:
            plugin = ep.load()
        except (Exception, SystemExit) as exc:  # a broken plugin must not break (or exit) the tool
            info.error = f"{type(exc).__name__} while importing: {exc}"
            continue
        _register(pm, plugin, info)
    for name, plugin in extra:
        info = PluginInfo(name=name, module=getattr(plugin, "__name__", repr(plugin)))
        infos[name] = info
        _register(pm, plugin, info)

    # A hookimpl named like no hookspec (a typo) is reported on its plugin, which is skipped.
    while True:
        try:
            pm.check_pending()
            break
        except pluggy.PluginValidationError as exc:
            name = pm.get_name(exc.plugin) if getattr(exc, "plugin", None) is not None else None
            if name is None or name not in infos:
                raise PluginError(f"a plugin implements an unknown hook: {exc}") from None
            infos[name].error = f"implements an unknown hook ({exc}); {_HOOKS_HINT}"
            pm.unregister(name=name)
    for name, info in infos.items():
        plugin = pm.get_plugin(name)
        if plugin is not None:
            info.hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
    return pm, infos


_HOOKS_HINT = (
    "hooks are register_formats, register_backends, register_merge_strategies, register_exporters, "
    "register_runtimes, register_commands"
)


def _register(pm: Any, plugin: Any, info: PluginInfo) -> None:
    """Register one plugin; a hookimpl whose signature the hookspec lacks marks it failed."""
    import pluggy

    try:
        pm.register(plugin, name=info.name)
    except (pluggy.PluginValidationError, ValueError) as exc:
        info.error = f"invalid hook implementation: {' '.join(str(exc).split())}"


def _check_contract(kind: str, obj: Any, plugin: str) -> str:
    from adaptkit.plugins.contracts import KINDS

    _, contract, required = KINDS[kind]
    name = getattr(obj, "name", None)
    if not isinstance(name, str) or not _NAME.match(name):
        raise PluginError(
            f"plugin {plugin!r} registered a {kind} with invalid name {name!r}",
            hint="names are lower-case letters, digits, '_' and '-'",
        )
    missing = [attr for attr in required if not hasattr(obj, attr)]
    if missing:
        raise PluginError(
            f"plugin {plugin!r} registered {kind} {name!r} without {', '.join(sorted(missing))} "
            f"required by {contract.__name__}"
        )
    return name


class RefusedRegistration(PluginError):
    """A plugin registered something the host cannot use beside what is already registered (an
    exporter whose flags clash): the plugin is skipped, reported with this reason, and everything
    else keeps working."""


def _check_exporter(table: Mapping[str, Registration], obj: Any, name: str, plugin: str) -> None:
    """Refuse an exporter whose declaration cannot become ``adaptkit export`` flags beside the
    host's and those of the exporters registered before it."""
    from adaptkit.plugins.export_flags import REFUSED_HINT, ExportFlags

    flags = ExportFlags()
    for reg in table.values():  # registration order; each was accepted this way
        flags.add(reg.name, reg.obj.options_schema, plugin=reg.plugin)
    problems = flags.problems(name, obj.options_schema)
    if problems:
        raise RefusedRegistration(f"exporter {name!r} refused: " + "; ".join(problems), hint=REFUSED_HINT)


def _make_register(table: dict[str, Registration], kind: str, plugin: str) -> Any:
    """The ``register`` callback handed to one plugin's ``register_<things>`` hook."""

    def register(obj: Any) -> None:
        name = _check_contract(kind, obj, plugin)
        if name in table:
            raise PluginError(
                f"{kind} {name!r} is registered by both plugin {table[name].plugin!r} and plugin {plugin!r}",
                hint=f"block one with {BLOCK_ENV}",
            )
        if kind == "exporter":
            _check_exporter(table, obj, name, plugin)
        table[name] = Registration(kind=kind, name=name, obj=obj, plugin=plugin)

    return register


def _builtin(info: PluginInfo | None) -> bool:
    """A plugin of adaptkit's own distribution (the builtins)."""
    return info is not None and info.distribution == "adaptkit"


def load_registry(*, env: Mapping[str, str] | None = None, extra: Iterable[tuple[str, Any]] = ()) -> Registry:
    """Load plugins and collect everything they register (see module docstring)."""
    from adaptkit.plugins.contracts import KINDS

    pm, infos = create_plugin_manager(env=env, extra=extra)
    registry = Registry(pm=pm, plugins=infos)
    for kind in KINDS:
        registry.entries[kind] = {}
    for kind, (hook_name, _, _) in KINDS.items():
        table = registry.entries[kind]
        hook = getattr(pm.hook, hook_name)
        # adaptkit's own plugins first, then the others in load order: a newcomer that clashes
        # with a builtin is the one refused.
        impls = sorted(hook.get_hookimpls(), key=lambda i: not _builtin(infos.get(i.plugin_name)))
        for impl in impls:
            if infos.get(impl.plugin_name) is not None and infos[impl.plugin_name].error:
                continue
            register = _make_register(table, kind, impl.plugin_name)
            try:
                impl.function(**{arg: register for arg in impl.argnames})
            except RefusedRegistration as exc:  # its plugin alone is skipped, and reported
                disable_plugin(registry, impl.plugin_name, exc.one_line())
            except PluginError:
                raise  # a clash or an invalid object: the registering plugin is named
            except (Exception, SystemExit) as exc:  # a hook that raises: skip its plugin whole
                disable_plugin(registry, impl.plugin_name, f"{hook_name} raised {type(exc).__name__}: {exc}")
    return registry


def disable_plugin(registry: Registry, name: str, reason: str) -> None:
    """Mark plugin ``name`` failed with ``reason`` and drop everything it registered."""
    info = registry.plugins.get(name)
    if info is not None:
        info.error = reason
    for table in registry.entries.values():
        for key in [k for k, r in table.items() if r.plugin == name]:
            del table[key]
    if registry.pm.get_plugin(name) is not None:
        registry.pm.unregister(name=name)


_cached: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry, loaded on first use."""
    global _cached
    if _cached is None:
        _cached = load_registry()
    return _cached


def reset_registry() -> None:
    """Forget the cached registry (tests; after installing a plugin at run time)."""
    global _cached
    _cached = None
