"""``adaptkit export``: bake adapters into a deployable model, with any registered exporter.

This module names no exporter option. Its flags are the host's own (``--model``, ``-a``, ``-o``,
``--force``, ``--json``, ``--exporter``), one ``--NAME`` per registered exporter, and every
exporter's declared options, generated from their ``options_schema`` when the command is parsed
or its help shown (:func:`adaptkit.exporting.exporter_options`; the registry imports plugin
modules, never torch). Values reach the host as given and are checked against the chosen
exporter's schema there, before any work.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from adaptkit.cli.output import echo_json, say

#: Set in a context's ``meta`` to generate flags from adaptkit's own exporters only (the CLI
#: reference documents those, whatever else is installed where it is rendered).
BUILTIN_ONLY = "adaptkit.export.builtin_only"
_PREFIX = "option__"  # click parameter names of exporter options; never a host parameter's
_SELECT = "select__"  # click parameter names of the --NAME selectors, one each

_HELP = """Export a base model with adapters; --NAME (or --exporter NAME) picks the exporter.

\b
Each exporter declares its options (listed below with the exporters that take
them); an option of another exporter is refused before anything loads. The
output folder appears only when complete, with OUT/export-report.json; an
existing one survives a failed run.
"""


def _exporters(ctx: click.Context) -> tuple[Any, list[Any]]:
    """The registry and the exporters whose flags and help the command shows."""
    from adaptkit.plugins import get_registry

    registry = get_registry()
    regs = registry.all("exporter")
    if ctx.meta.get(BUILTIN_ONLY):
        ours = {name for name, info in registry.plugins.items() if info.distribution == "adaptkit"}
        regs = [r for r in regs if r.plugin in ours]
    return registry, regs


def _option_help(option: Any) -> str:
    """Each declaring exporter's description, after its selector flag, with its default."""
    from adaptkit.exporting import selector

    parts = []
    for name, spec in option.specs.items():
        default = spec.get("default")
        shown = "" if option.is_switch or default is None else f"; default {default}"
        parts.append(f"{selector(name)}: {spec['description']}{shown}")
    return "; ".join(parts)


def _generated(registry: Any, regs: list[Any]) -> tuple[list[click.Option], list[click.Option]]:
    """The ``--NAME`` selectors (with ``--exporter``) and the exporter options, as click options."""
    from adaptkit.exporting import exporter_options, selector

    selectors: list[click.Option] = [
        _Selector(
            [selector(r.name), _SELECT + r.name.replace("-", "_")],
            exporter=r.name,
            help=f"{r.obj.description} (exporter {r.name!r}).",
        )
        for r in regs
    ]
    selectors.append(
        click.Option(
            ["--exporter", "exporter"],
            multiple=True,
            help="Any registered exporter by name (see `adaptkit plugins`).",
        )
    )
    options = []
    for key, option in exporter_options(registry, only=[r.name for r in regs]).items():
        if option.two_way:  # a nullable boolean: --KEY true, --no-KEY false, neither None
            decls = ["/".join(option.flags), _PREFIX + key]
            opt = click.Option(decls, is_flag=True, default=None, help=_option_help(option))
        elif option.is_switch:
            value = not next(iter(option.specs.values()))["default"]
            opt = _Switch([option.flag, _PREFIX + key], value=value, help=_option_help(option))
        else:
            opt = click.Option(
                [option.flag, _PREFIX + key], metavar=option.metavar, help=_option_help(option)
            )
        options.append(opt)
    return selectors, options


class _Selector(click.Option):
    """``--NAME``: picks exporter ``NAME`` (each selector its own parameter, so that two given are
    seen, not one silently winning)."""

    def __init__(self, decls: list[str], *, exporter: str, **kwargs: Any) -> None:
        super().__init__(decls, is_flag=True, **kwargs)
        self.exporter = exporter


class _Switch(click.Option):
    """A boolean option's flag: given, it sets the option to ``value``, the opposite of its
    default (``--no-KEY`` → false, ``--KEY`` → true)."""

    def __init__(self, decls: list[str], *, value: bool, **kwargs: Any) -> None:
        super().__init__(decls, is_flag=True, **kwargs)
        self.value = value


class ExportCommand(click.Command):
    """``adaptkit export`` with flags generated from the registry (built once per registry)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._tail = [
            click.Option(
                ["-f", "--force"], is_flag=True, help="Replace an existing non-empty output folder."
            ),
            click.Option(["--json", "as_json"], is_flag=True, help="Print the export report as JSON."),
        ]
        self._cache: tuple[Any, tuple[str, ...], Any] = (None, (), None)

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        registry, regs = _exporters(ctx)
        names = tuple(r.name for r in regs)
        if self._cache[0] is not registry or self._cache[1] != names:
            self._cache = (registry, names, _generated(registry, regs))
        selectors, options = self._cache[2]
        help_option = self.get_help_option(ctx)
        return [*selectors, *self.params, *options, *self._tail, *([help_option] if help_option else [])]

    def format_help_text(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The host's text, then each exporter's own ``help`` (its paragraph, examples welcome)."""
        import inspect

        from adaptkit.exporting import selector

        super().format_help_text(ctx, formatter)
        regs = _exporters(ctx)[1]
        width = max((len(selector(r.name)) for r in regs), default=0) + 2
        for reg in regs:
            text = inspect.cleandoc(getattr(reg.obj, "help", "") or "")
            if not text:
                continue
            lines = text.splitlines()
            hanging = [
                selector(reg.name).ljust(width) + lines[0],
                *(" " * width + line for line in lines[1:]),
            ]
            formatter.write_paragraph()
            with formatter.indentation():
                formatter.write_text("\b\n" + "\n".join(hanging))


@click.command("export", cls=ExportCommand, help=_HELP, short_help="Export a base model with adapters.")
@click.option(
    "--model", required=True, help="Hugging Face model directory or Hub id (org/name; safetensors only)."
)
@click.option(
    "-a",
    "--adapter",
    "adapters",
    multiple=True,
    metavar="SPEC",
    help="Adapter SPEC, repeatable; several are combined exactly (a recipe as `adaptkit combine` "
    "makes it, tune: included).",
)
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Output folder.")
def command(
    exporter: tuple[str, ...],
    model: str,
    adapters: tuple[str, ...],
    output: Path,
    force: bool,
    as_json: bool,
    **rest,
) -> None:
    from adaptkit.errors import AdaptkitError
    from adaptkit.exporting import export_specs

    ctx = click.get_current_context()
    given: dict[str, Any] = {}
    picks: dict[str, str] = {}  # exporter name -> how it was picked
    for param in ctx.command.get_params(ctx):
        name = param.name or ""
        typed = ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE
        if isinstance(param, _Selector) and rest[name]:
            picks.setdefault(param.exporter, param.opts[0])
        # Only flags the user typed: a default is the exporter's to fill.
        elif name.startswith(_PREFIX) and typed:
            given[name[len(_PREFIX) :]] = param.value if isinstance(param, _Switch) else rest[name]
    for name in exporter:
        picks.setdefault(name, f"--exporter {name}")
    if len(picks) > 1:
        raise AdaptkitError(
            f"{' and '.join(picks.values())} each pick an exporter; an export has one",
            hint="give one of them",
        )
    chosen = next(iter(picks), None)
    report = export_specs(
        chosen,
        model,
        list(adapters),
        output,
        options=given,
        force=force,
        log=(lambda m: None) if as_json else say,
    )
    if as_json:
        echo_json(report)
    else:
        click.echo(f"wrote {output} ({chosen})")
