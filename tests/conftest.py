"""Fixtures for every test: the CLI run in-process, a fresh plugin registry. Shared builders
(models, adapters, crafted files) are in ``tests/helpers``."""

from __future__ import annotations

import pytest


@pytest.fixture
def run_cli(capsys):
    """Run ``adaptkit ARGS`` in-process; returns (exit code, stdout, stderr)."""
    from adaptkit.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        code = main([str(a) for a in args])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


@pytest.fixture(autouse=True)
def _fresh_registry():
    from adaptkit.plugins import reset_registry

    reset_registry()
    yield
    reset_registry()
