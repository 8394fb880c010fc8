"""Files crafted for tests: raw safetensors bytes, JSON lines, a Hugging Face cache, a shared
library that leaves a canary when loaded."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
from pathlib import Path

#: The commit a test Hub cache's ``refs/main`` names (40 hex digits, as the Hub's are).
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def raw_safetensors(header: dict, data: bytes, *, header_text: str | None = None) -> bytes:
    """Bytes of a safetensors file with exactly the given header (no validation)."""
    text = header_text if header_text is not None else json.dumps(header)
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw + data


def write_jsonl(path: Path, rows) -> Path:
    """One JSON document a line."""
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_records(path: Path, records) -> Path:
    """Token-id training records (lists of ints) as ``{"input_ids": [...]}`` lines."""
    return write_jsonl(path, ({"input_ids": r} for r in records))


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
