"""A built wheel carries the core, every builtin plugin, the schemas, and the entry points."""

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_wheel_contents(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "hatchling", "build", "-t", "wheel", "-d", str(tmp_path)],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("adaptkit-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for schema in (REPO / "schemas").glob("*.schema.json"):
        assert f"adaptkit/_schemas/{schema.name}" in names
    for plugin in (REPO / "plugins").iterdir():
        if (plugin / "__init__.py").exists():
            assert f"{plugin.name}/__init__.py" in names, f"plugin {plugin.name} missing from wheel"
    assert "adaptkit/py.typed" in names
    (eps,) = [n for n in names if n.endswith("entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(eps).decode()
    assert "[adaptkit]" in text and "adaptkit = adaptkit.cli:main" in text
