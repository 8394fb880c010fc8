"""Example plugin: ``adaptkit layerstats SPEC`` sums update norms per transformer layer."""

from __future__ import annotations

import math
import re
from collections import defaultdict

import click

from adaptkit.api import hookimpl

_LAYER = re.compile(r"\.(\d+)\.")


@hookimpl
def register_commands(cli):
    @cli.command("layerstats")
    @click.argument("spec")
    def layerstats(spec: str) -> None:
        """Total ||dW||_F of an adapter per layer index (from module paths like 'layers.3.')."""
        from adaptkit.api.files import load_spec

        adapter = load_spec(spec)
        squares: dict[str, float] = defaultdict(float)
        counts: dict[str, int] = defaultdict(int)
        for name, pair in adapter.targets.items():
            m = _LAYER.search(f".{name}.")
            layer = m.group(1) if m else "-"
            squares[layer] += pair.delta_norm() ** 2
            counts[layer] += 1
        click.echo("layer  targets  ||dW||_F")
        for layer in sorted(squares, key=lambda k: (not k.isdigit(), int(k) if k.isdigit() else 0)):
            click.echo(f"{layer:<6} {counts[layer]:<8} {math.sqrt(squares[layer]):.6g}")
