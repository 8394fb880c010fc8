"""CLI contract: fast help, one-line errors with exit code 2, JSON output, plugin commands."""

import json
import subprocess
import sys
import time
import types

import click

from adaptkit import hookimpl, save_adapter
from adaptkit.cli import cli
from tests.helpers.adapters import make_adapter

HEAVY = ("torch", "onnx", "onnxruntime", "bitsandbytes", "transformers", "safetensors")


def test_help_is_fast_and_imports_no_heavy_library():
    code = (
        f"HEAVY = {HEAVY!r}\n"
        "import sys, time; t=time.perf_counter(); from adaptkit.cli import main\n"
        "rc = main(['--help']); dt = time.perf_counter() - t\n"
        "heavy = [m for m in HEAVY if m in sys.modules]\n"
        "import json; print(json.dumps([rc, heavy, dt]), file=sys.stderr)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    rc, heavy, seconds = json.loads(res.stderr.strip().splitlines()[-1])
    assert rc == 0 and heavy == []
    assert "inspect" in res.stdout and "validate" in res.stdout and "plugins" in res.stdout
    assert seconds < 1.0, f"adaptkit --help took {seconds:.2f}s"


def test_console_script_help_wall_time():
    exe = [sys.executable, "-m", "adaptkit", "--help"]
    t = time.perf_counter()
    subprocess.run(exe, check=True, capture_output=True)
    assert time.perf_counter() - t < 3.0  # interpreter start included; see README for numbers


def test_version(run_cli):
    from adaptkit import __version__

    code, out, _ = run_cli("--version")
    assert code == 0 and __version__ in out


def test_inspect_json_reports_exact_values(run_cli, tmp_path):
    adapter = make_adapter(3, alphas={"model.layers.0.self_attn.v_proj": 3.0})
    path = save_adapter(adapter, tmp_path / "a.safetensors")
    code, out, err = run_cli("inspect", path, "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["format"] == "adaptkit" and info["base_model"] == {"name": "tiny-llama"}
    by_name = {t["name"]: t for t in info["targets"]}
    assert set(by_name) == set(adapter.targets)
    for name, pair in adapter.targets.items():
        t = by_name[name]
        assert (t["rank"], t["alpha"], t["scaling"], t["scale"]) == (
            pair.rank,
            pair.alpha,
            pair.scaling,
            pair.scale,
        )
        assert t["shape"] == [pair.out_features, pair.in_features]
        dense = float(pair.delta().double().norm())
        assert abs(t["delta_norm"] - dense) <= 1e-6 * dense
    assert by_name["model.layers.0.self_attn.v_proj"]["scale"] == 1.5
    assert info["totals"]["targets"] == 3 and info["totals"]["params"] == adapter.num_params()


def test_inspect_table(run_cli, tmp_path):
    path = save_adapter(make_adapter(), tmp_path / "a.safetensors")
    code, out, _ = run_cli("inspect", path)
    assert code == 0 and "q_proj" in out and "3 targets" in out


def test_error_contract_one_line_exit_2_no_traceback(run_cli, tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x05\x00")
    before = sorted(tmp_path.iterdir())
    code, out, err = run_cli("inspect", bad)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(bad) in lines[0]
    assert "Traceback" not in err
    assert sorted(tmp_path.iterdir()) == before


def test_usage_errors_follow_the_same_contract(run_cli):
    code, _, err = run_cli("inspect")
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    code, _, err = run_cli("no-such-command")
    assert code == 2 and err.startswith("error: ")


def test_debug_shows_traceback(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"junk")
    res = subprocess.run(
        [sys.executable, "-m", "adaptkit", "--debug", "inspect", str(bad)],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 2 and "Traceback" in res.stderr and "error: " in res.stderr


def test_plugins_json(run_cli):
    code, out, _ = run_cli("plugins", "--json")
    assert code == 0
    report = {p["name"]: p for p in json.loads(out)}
    native = report["native"]
    assert native["registers"]["format"][0]["name"] == "adaptkit"
    assert native["registers"]["format"][0]["available"] is True
    assert native["distribution"] == "adaptkit" and native["error"] is None


def test_validate_reports_every_problem(run_cli, tmp_path):
    good = save_adapter(make_adapter(), tmp_path / "good.safetensors")
    spec = tmp_path / "a.yaml"
    spec.write_text("adapter: good.safetensors\nweight: one\nextra: 1\n")
    ok_spec = tmp_path / "b.yaml"
    ok_spec.write_text("adapter: good.safetensors\nweight: 0.5\n")
    code, out, err = run_cli("validate", good, ok_spec, spec)
    assert code == 2
    assert f"ok    {good}" in out and f"ok    {ok_spec}" in out
    assert "weight: 'one' is not of type 'number'" in err and "'extra' was unexpected" in err
    assert err.strip().splitlines()[-1] == "error: 1 of 3 files have problems"


def test_validate_json_and_warning_for_zero_b(run_cli, tmp_path):
    adapter = make_adapter()
    adapter.targets["model.layers.0.self_attn.q_proj"].B.zero_()
    path = save_adapter(adapter, tmp_path / "z.safetensors")
    code, out, _ = run_cli("validate", "--json", path)
    assert code == 0
    (result,) = json.loads(out)
    assert result["problems"] == [] and "q_proj.lora_B.weight is all zero" in result["warnings"][0]


def _plugin_with_commands(monkeypatch, name, register_commands):
    """Make the registry the builtins plus plugin ``name`` with this ``register_commands``
    hook, and have the CLI load plugin commands again."""
    from adaptkit.plugins import load_registry

    mod = types.SimpleNamespace(register_commands=hookimpl(register_commands))
    monkeypatch.setattr("adaptkit.plugins.registry._cached", load_registry(extra=[(name, mod)]))
    monkeypatch.setattr(cli, "_plugins_loaded", False)


def test_hook_register_commands(monkeypatch, run_cli):
    def register_commands(cli):
        @cli.command("hello")
        def hello():
            """Say hello."""
            click.echo("hello from a plugin")

    _plugin_with_commands(monkeypatch, "greeter", register_commands)
    try:
        code, out, _ = run_cli("hello")
        assert code == 0 and out.strip() == "hello from a plugin"
    finally:
        cli.commands.pop("hello", None)


def test_plugin_command_clash_is_an_error(monkeypatch, run_cli):
    def register_commands(cli):
        @cli.command("inspect")
        def other():
            pass

    _plugin_with_commands(monkeypatch, "clasher", register_commands)
    code, _, err = run_cli("plugins")
    assert code == 2 and "plugin 'clasher' adds command 'inspect'" in err
    code, out, _ = run_cli("inspect", "--help")
    assert "Show what an adapter SPEC holds" in out
