"""The CLI error contract as one assertion."""

from __future__ import annotations

from pathlib import Path


def assert_refused(run_cli, root: Path, args, words, tree=None) -> str:
    """Run ``adaptkit ARGS`` and check the error contract: exit 2, exactly one ``error:`` line
    holding ``words`` (a fragment or a list of them), no traceback, and nothing under ``root``
    created or removed (``tree(root)`` compares more, e.g. contents). Returns the line."""
    listing = tree or (lambda r: sorted(str(p.relative_to(r)) for p in r.rglob("*")))
    before = listing(root)
    code, _, err = run_cli(*args)
    errors = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err[-2000:]
    fragments = [words] if isinstance(words, str) else list(words)
    assert all(w in errors[0] for w in fragments), errors[0]
    assert listing(root) == before  # nothing written
    return errors[0]
