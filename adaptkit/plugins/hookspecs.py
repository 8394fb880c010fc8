"""The hooks adaptkit plugins implement.

A plugin is a module (or object) exposed under the ``adaptkit`` entry-point group, e.g. in
its ``pyproject.toml``::

    [project.entry-points.adaptkit]
    my_plugin = "my_package.my_plugin"

and implementing any of the hooks below with :data:`hookimpl`::

    from adaptkit import hookimpl

    @hookimpl
    def register_merge_strategies(register):
        register(MyStrategy())

Every ``register_<things>`` hook receives one argument, ``register``: a callback taking one
object. The host, not the plugin, owns the bookkeeping: it checks the object fulfils the
contract of its kind (see :mod:`adaptkit.plugins.contracts`), records which plugin registered it, and
raises :class:`~adaptkit.errors.PluginError` naming *both* plugins when two register the same
name. Builtin plugins (``plugins/`` in the source tree) use exactly this path.

Hooks only ever gain arguments (pluggy passes an implementation just the ones it names), so a
plugin written against an older adaptkit keeps working.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

PROJECT_NAME = "adaptkit"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

Register = Callable[[Any], None]


@hookspec
def register_formats(register: Register) -> None:
    """Register adapter file formats (readers/writers).

    Args:
        register: Call once per format with an object fulfilling
            :class:`adaptkit.plugins.contracts.AdapterFormat` (``name``, ``description``,
            ``detect(path)``, ``read(path)``, optionally ``write(adapter, path, overwrite=)``).
            SPEC arguments on the command line are resolved by asking each format's
            ``detect``.
    """


@hookspec
def register_backends(register: Register) -> None:
    """Register training backends (``adaptkit train --backend NAME``).

    Args:
        register: Call once per backend with an object fulfilling
            :class:`adaptkit.plugins.contracts.Backend` (``name``, ``description``, optional
            ``requires``).
    """


@hookspec
def register_merge_strategies(register: Register) -> None:
    """Register merge strategies (``adaptkit combine --strategy NAME``).

    Args:
        register: Call once per strategy with an object fulfilling
            :class:`adaptkit.plugins.contracts.MergeStrategy` (``name``, ``description``, optional
            ``requires``).
    """


@hookspec
def register_exporters(register: Register) -> None:
    """Register exporters (``adaptkit export --NAME``).

    Args:
        register: Call once per exporter with an object fulfilling
            :class:`adaptkit.plugins.contracts.Exporter` (``name``, ``description``, optional
            ``requires``).
    """


@hookspec
def register_runtimes(register: Register) -> None:
    """Register runtimes (``adaptkit generate MODEL`` runs MODEL on the one that accepts it).

    Args:
        register: Call once per runtime with an object fulfilling
            :class:`adaptkit.plugins.contracts.Runtime` (``name``, ``description``,
            ``accepts(model)``, ``generate(request, emit)``, optional ``requires``).
    """


@hookspec
def register_commands(cli: Any) -> None:
    """Add sub-commands to the ``adaptkit`` command line.

    Args:
        cli: The root :class:`click.Group`; call ``cli.add_command(...)`` or decorate with
            ``@cli.command()``. A name that clashes with an existing command is an error
            naming the plugin.
    """
