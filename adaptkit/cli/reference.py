"""Render the CLI reference (``docs/cli.md``) from the commands' own ``--help`` texts.

    python -m adaptkit.cli.reference > docs/cli.md

A test regenerates it and compares, so the reference cannot drift from the code.
"""

from __future__ import annotations

import click


def render() -> str:
    from adaptkit.cli import BUILTIN_COMMANDS, BUILTIN_PLUGIN_COMMANDS, cli

    parts = [
        "# CLI reference",
        "",
        "Generated from the commands' `--help` by `python -m adaptkit.cli.reference`; a test",
        "checks it is current. Every command exits 0 on success and 2 on a user error, printing",
        "one `error: ...` line (`--debug` shows the traceback).",
        "",
    ]
    from adaptkit.cli.export_cmd import BUILTIN_ONLY

    ctx = click.Context(
        cli, info_name="adaptkit", terminal_width=100, max_content_width=100, **cli.context_settings
    )
    ctx.meta[BUILTIN_ONLY] = True  # `export`'s flags: adaptkit's own exporters', whatever is installed
    parts += ["## adaptkit", "", "```text", _help(cli, ctx), "```", ""]
    for name in BUILTIN_COMMANDS:
        cmd = cli.commands[name]
        sub = click.Context(cmd, info_name=name, parent=ctx, terminal_width=100, max_content_width=100)
        parts += [f"## adaptkit {name}", "", "```text", _help(cmd, sub), "```", ""]
    for name in BUILTIN_PLUGIN_COMMANDS:  # loaded through the plugin registry, as users get them
        cmd = cli.get_command(ctx, name)
        if cmd is None:  # its plugin is blocked or broken here
            raise SystemExit(f"the builtin plugin command {name!r} is not available")
        sub = click.Context(cmd, info_name=name, parent=ctx, terminal_width=100, max_content_width=100)
        parts += [f"## adaptkit {name}", "", "```text", _help(cmd, sub), "```", ""]
    return "\n".join(parts)


def _help(cmd: click.Command, ctx: click.Context) -> str:
    if isinstance(cmd, click.Group):
        # Only the builtin commands, whatever plugins are installed where this runs.
        from adaptkit.cli import BUILTIN_COMMANDS

        formatter = ctx.make_formatter()
        cmd.format_usage(ctx, formatter)
        cmd.format_help_text(ctx, formatter)
        click.Command.format_options(cmd, ctx, formatter)  # options only, not plugin commands
        with formatter.section("Commands"):
            formatter.write_dl([(n, cmd.commands[n].get_short_help_str(80)) for n in BUILTIN_COMMANDS])
        return formatter.getvalue().rstrip()
    return cmd.get_help(ctx).rstrip()


if __name__ == "__main__":
    print(render(), end="")
