import shutil
import subprocess
from pathlib import Path

import pytest

#: The commit a test Hub cache's ``refs/main`` names (40 hex digits, as the Hub's are).
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def pytest_collection_modifyitems(items):
    for item in items:
        if "/reliability/" in str(item.fspath):
            item.add_marker(pytest.mark.reliability)


def canary_library(lib: Path, canary: Path) -> bool:
    """Write a shared library at ``lib`` whose constructor creates ``canary`` when it is loaded
    (by ``dlopen``, an ``import`` of an extension module, ONNX Runtime's custom ops...).

    Returns whether it is real: without a C compiler ``lib`` is any bytes named like a library,
    and only a refusal before any load can be checked.
    """
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        lib.write_bytes(b"\x7fELF not really")
        return False
    src = lib.with_name(lib.name + ".c")
    src.write_text(
        "#include <stdio.h>\n"
        "__attribute__((constructor)) static void fire(void) {\n"
        f'  FILE *f = fopen("{canary}", "w"); if (f) {{ fputs("ran", f); fclose(f); }}\n'
        "}\n"
    )
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
    src.unlink()
    return True


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


def hub_cache(root: Path, model: Path, repo_id: str = "org/tiny") -> Path:
    """A Hugging Face cache of ``model`` under ``root``, laid out as huggingface_hub writes it:
    blobs, a snapshot of relative links into them, ``refs/main`` naming the snapshot. Returns
    the repository folder (``models--org--name``)."""
    repo = root / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / COMMIT
    (repo / "blobs").mkdir(parents=True)
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    for i, item in enumerate(sorted(model.iterdir())):
        shutil.copy(item, repo / "blobs" / f"blob{i}")
        (snap / item.name).symlink_to(Path("..", "..", "blobs", f"blob{i}"))
    return repo
