"""A broken plugin is reported by name and skipped; it never takes the other plugins, `--help`
or `plugins` down, and never makes a command exit early having done nothing."""

import json
import os
import subprocess
import sys
import textwrap
import types

from adaptkit import hookimpl
from adaptkit.plugins import LOAD_ENV, load_registry


class Fmt:
    name, description = "fine", "a fine format"

    def detect(self, path):
        return False

    def read(self, path):
        raise NotImplementedError


def _plugin(**hooks):
    mod = types.SimpleNamespace()
    for name, fn in hooks.items():
        setattr(mod, name, hookimpl(fn))
    return mod


def test_a_hook_that_raises_disables_only_its_plugin():
    def good(register):
        register(Fmt())

    def bad(register):
        raise RuntimeError("boom")

    registry = load_registry(
        env={LOAD_ENV: ""},
        extra=[("good", _plugin(register_formats=good)), ("bad", _plugin(register_formats=bad))],
    )
    assert registry.plugins["bad"].error == "register_formats raised RuntimeError: boom"
    assert [r.name for r in registry.all("format")] == ["fine"]
    assert registry.plugins["good"].error is None


def test_a_hook_signature_the_hookspec_lacks_is_reported():
    def register_formats(register, surprise):
        pass

    registry = load_registry(env={LOAD_ENV: ""}, extra=[("odd", _plugin(register_formats=register_formats))])
    assert (
        "invalid hook implementation" in registry.plugins["odd"].error
        and "surprise" in registry.plugins["odd"].error
    )


def _site(tmp_path, name, body):
    site = tmp_path / "site"
    info = site / f"{name}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[adaptkit]\n{name} = {name}\n")
    (site / f"{name}.py").write_text(textwrap.dedent(body))
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}


def _adaptkit(env, *args):
    return subprocess.run(
        [sys.executable, "-m", "adaptkit", *map(str, args)], env=env, capture_output=True, text=True
    )


def test_a_plugin_exiting_at_import_does_not_end_commands(tmp_path):
    env = _site(tmp_path, "quitter", "raise SystemExit(0)\n")
    res = _adaptkit(env, "plugins", "--json")
    assert res.returncode == 0, res.stderr
    quitter = {p["name"]: p for p in json.loads(res.stdout)}["quitter"]
    assert quitter["error"].startswith("SystemExit while importing")
    (tmp_path / "bad.yaml").write_text("adapter: missing.safetensors\n")
    res = _adaptkit(env, "validate", tmp_path / "bad.yaml")  # still does its job: finds the problem
    assert res.returncode == 2 and "missing.safetensors" in res.stderr


def test_register_commands_raising_leaves_help_and_plugins_working(tmp_path):
    env = _site(
        tmp_path,
        "brokencmd",
        """
        from adaptkit import hookimpl

        @hookimpl
        def register_commands(cli):
            raise RuntimeError("no commands today")
        """,
    )
    res = _adaptkit(env, "--help")
    assert res.returncode == 0 and "combine" in res.stdout, res.stderr
    res = _adaptkit(env, "plugins")
    assert (
        res.returncode == 0
        and "FAILED TO LOAD: register_commands raised RuntimeError: no commands today" in res.stdout
    )
