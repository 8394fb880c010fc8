import shutil
import subprocess
from pathlib import Path

import pytest


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
