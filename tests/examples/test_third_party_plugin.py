"""The example plugin in examples/third_party_plugin is found through its entry point.

Instead of pip-installing into the test environment, the test lays down the same
``.dist-info`` metadata an install would (``entry_points.txt``) on a temporary path; adaptkit
discovers it through ``importlib.metadata`` exactly as it would an installed package.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import tomllib

from adaptkit import save_adapter
from tests.helpers.adapters import make_adapter

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "third_party_plugin"


def _fake_install(site: Path) -> dict:
    meta = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
    info = site / f"adaptkit_layerstats-{meta['version']}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {meta['name']}\nVersion: {meta['version']}\n"
    )
    eps = meta["entry-points"]["adaptkit"]
    (info / "entry_points.txt").write_text("[adaptkit]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(EXAMPLE), env.get("PYTHONPATH", "")])
    return env


def _adaptkit(env, *args):
    return subprocess.run(
        [sys.executable, "-m", "adaptkit", *map(str, args)], env=env, capture_output=True, text=True
    )


def test_example_plugin_is_listed_and_its_command_runs(tmp_path):
    env = _fake_install(tmp_path / "site")
    res = _adaptkit(env, "plugins", "--json")
    assert res.returncode == 0, res.stderr
    plugins = {p["name"]: p for p in json.loads(res.stdout)}
    assert plugins["layerstats"]["distribution"] == "adaptkit-layerstats"
    assert plugins["layerstats"]["hooks"] == ["register_commands"]

    path = save_adapter(make_adapter(), tmp_path / "a.safetensors")
    res = _adaptkit(env, "layerstats", path)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert lines[0].split() == ["layer", "targets", "||dW||_F"]
    assert [ln.split()[:2] for ln in lines[1:]] == [["0", "2"], ["1", "1"]]

    env["ADAPTKIT_BLOCK_PLUGINS"] = "layerstats"
    res = _adaptkit(env, "layerstats", path)
    assert res.returncode == 2 and "No such command" in res.stderr
