"""``adaptkit plugins``: what is loaded, what each plugin registers, and what is missing."""

from __future__ import annotations

import click

from adaptkit.cli.output import echo_json, echo_table


def plugins_report() -> list[dict]:
    from adaptkit.plugins import get_registry

    registry = get_registry()
    report = []
    for name in sorted(registry.plugins):
        info = registry.plugins[name]
        registered = {}
        for kind, names in registry.registered_by(name).items():
            registered[kind] = [
                {
                    "name": n,
                    "description": registry.registration(kind, n).obj.description,
                    "available": registry.registration(kind, n).available,
                    "missing": sorted(set(registry.registration(kind, n).missing.values())),
                }
                for n in names
            ]
        report.append(
            {
                "name": name,
                "module": info.module,
                "distribution": info.distribution,
                "version": info.version,
                "hooks": info.hooks,
                "registers": registered,
                "error": info.error,
            }
        )
    return report


@click.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def command(as_json: bool) -> None:
    """List loaded plugins and what they register.

    Builtins and third-party plugins load the same way: through the 'adaptkit' entry-point
    group. Restrict with ADAPTKIT_LOAD_PLUGINS=a,b or ADAPTKIT_BLOCK_PLUGINS=c.
    """
    report = plugins_report()
    if as_json:
        echo_json(report)
        return
    rows = []
    for p in report:
        if p["error"]:
            rows.append((p["name"], "-", "-", f"FAILED TO LOAD: {p['error']}"))
        for kind, items in p["registers"].items():
            for item in items:
                status = "ok" if item["available"] else "needs: pip install " + " ".join(item["missing"])
                rows.append((p["name"], kind, item["name"], status))
        if not p["registers"] and not p["error"]:
            rows.append((p["name"], "-", "-", "hooks: " + ", ".join(p["hooks"])))
    echo_table(("plugin", "kind", "name", "status"), rows)
