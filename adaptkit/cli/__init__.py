"""The ``adaptkit`` command line.

Start-up stays fast: this module imports only click; commands import torch & co. inside
their bodies. Errors follow one contract: an :class:`~adaptkit.errors.AdaptkitError` (or a
usage error) prints a single ``error: ...`` line on stderr and exits with code 2; ``--debug``
(or ``ADAPTKIT_DEBUG=1``) shows the traceback instead.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import traceback
from collections.abc import Iterator

import click

from adaptkit.__about__ import __version__
from adaptkit.cli.output import terminal_safe
from adaptkit.errors import AdaptkitError


class AdaptkitGroup(click.Group):
    """Root group that adds plugin commands (``register_commands``) on first lookup."""

    _plugins_loaded = False

    def _load_plugin_commands(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        from adaptkit.errors import PluginError
        from adaptkit.plugins import disable_plugin, get_registry

        registry = get_registry()
        hook = registry.pm.hook.register_commands
        for impl in hook.get_hookimpls():
            before = dict(self.commands)
            try:
                impl.function(**{arg: self for arg in impl.argnames})
            except (Exception, SystemExit) as exc:  # a broken plugin loses its commands, nothing else
                self.commands = before
                disable_plugin(
                    registry, impl.plugin_name, f"register_commands raised {type(exc).__name__}: {exc}"
                )
                continue
            for name, cmd in list(self.commands.items()):
                if name in before and before[name] is not cmd:
                    self.commands[name] = before[name]
                    raise PluginError(
                        f"plugin {impl.plugin_name!r} adds command {name!r}, which already exists"
                    )

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._load_plugin_commands()
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        self._load_plugin_commands()
        return super().get_command(ctx, cmd_name)


@click.group(cls=AdaptkitGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="adaptkit")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.option("--verbose", is_flag=True, help="Also show other libraries' log messages and warnings.")
@click.pass_context
def cli(ctx: click.Context, debug: bool, verbose: bool) -> None:
    """adaptkit: LoRA adapters you can combine exactly, merge honestly and export fast.

    A SPEC is an adapter file (.safetensors), an adapter directory a format plugin knows
    (e.g. PEFT), or an adapter manifest YAML (adapter: PATH, weight: W, name: N).

    \b
    Examples:
      adaptkit demo                      # the whole pipeline on a built-in tiny model
      adaptkit combine a.yaml b.yaml -o merged.safetensors
      adaptkit convert peft_adapter_dir -o adapter.safetensors --to adaptkit
      adaptkit inspect lora.safetensors --json
      adaptkit validate a.yaml b.yaml
      adaptkit plugins
    """
    from adaptkit.cli.quiet import third_party_output

    ctx.with_resource(third_party_output(verbose))  # stderr carries adaptkit's lines only


#: Commands of adaptkit itself, in the order the reference documents them.
BUILTIN_COMMANDS = (
    "demo", "combine", "convert", "train", "export", "generate", "inspect", "validate", "plugins",
)  # fmt: skip
#: Commands the builtin plugins add (through ``register_commands``, like any plugin).
BUILTIN_PLUGIN_COMMANDS: tuple[str, ...] = ()


def _register_builtin_commands() -> None:
    from adaptkit.cli import (
        combine_cmd,
        convert_cmd,
        demo_cmd,
        export_cmd,
        generate_cmd,
        inspect_cmd,
        plugins_cmd,
        train_cmd,
        validate_cmd,
    )

    for module in (
        demo_cmd,
        combine_cmd,
        convert_cmd,
        train_cmd,
        export_cmd,
        generate_cmd,
        inspect_cmd,
        validate_cmd,
        plugins_cmd,
    ):
        cli.add_command(module.command)


_register_builtin_commands()


def _debug_requested(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get("ADAPTKIT_DEBUG", "") not in ("", "0")


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM or SIGHUP so that, like Ctrl-C, every temp output
    is removed on the way out (a plain kill would leave them behind)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _on_signal(signum: int, _frame: object) -> None:
    raise Terminated(signum)


@contextlib.contextmanager
def _terminate_cleanly() -> Iterator[None]:
    """SIGTERM and SIGHUP unwind the stack (running every cleanup) while a command runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handled = [sig for sig in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if sig]
    previous = {sig: signal.signal(sig, _on_signal) for sig in handled}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point; returns (and exits with) the process exit code."""
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        with _terminate_cleanly():
            rv = cli.main(args=args, prog_name="adaptkit", standalone_mode=False)
    except AdaptkitError as exc:
        if _debug_requested(args):
            traceback.print_exc()
        click.echo(f"error: {terminal_safe(exc.one_line())}", err=True)
        code = exc.exit_code
    except OSError as exc:  # the disk, not adaptkit: full, read-only, gone
        if _debug_requested(args):
            traceback.print_exc()
        where = f"{exc.filename}: " if exc.filename else ""
        click.echo(terminal_safe(f"error: {where}{exc.strerror or exc}"), err=True)
        code = 2
    except click.exceptions.Abort:
        click.echo("error: interrupted", err=True)
        code = 130
    except KeyboardInterrupt:
        click.echo("error: interrupted", err=True)
        code = 130
    except Terminated as exc:
        click.echo(f"error: terminated ({signal.Signals(exc.signum).name}); nothing was written", err=True)
        code = 128 + exc.signum
    except click.ClickException as exc:
        where = f" (see '{exc.ctx.command_path} --help')" if getattr(exc, "ctx", None) else ""
        click.echo(terminal_safe(f"error: {' '.join(exc.format_message().split())}{where}"), err=True)
        code = 2
    else:
        code = rv if isinstance(rv, int) else 0
    if argv is None:
        sys.exit(code)
    return code
