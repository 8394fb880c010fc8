"""The third-party exporter example (examples/dense_delta_exporter), installed for real with pip:
its entry point registers the exporter, its declared option becomes an `adaptkit export` flag
with its help, and it works (and is refused) from the command line."""

import json

import pytest

from tests.helpers.examples import install_example, run_installed


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    return install_example("dense_delta_exporter", tmp_path_factory)


def _adaptkit(site, *args, block=None):
    return run_installed(site, "dense_delta_exporter", *args, block=block)


def test_installed_exporter_is_listed_and_its_option_is_a_flag_with_help(site):
    res = _adaptkit(site, "plugins", "--json")
    assert res.returncode == 0, res.stderr
    plugin = {p["name"]: p for p in json.loads(res.stdout)}["densedelta"]
    assert plugin["distribution"] == "adaptkit-densedelta" and plugin["hooks"] == ["register_exporters"]
    res = _adaptkit(site, "export", "--help")
    assert res.returncode == 0, res.stderr
    text = " ".join(res.stdout.split())
    assert "--dense-delta each target's dense update" in text  # the selector's line
    assert "--dense-delta OUT/deltas.safetensors: ΔW_t = Σ w·s·B·A" in text  # the exporter's help
    assert "--delta-dtype [float32|float16|bfloat16] --dense-delta: dtype of the written ΔW" in text
    blocked = _adaptkit(site, "export", "--help", block="densedelta")
    assert "--delta-dtype" not in blocked.stdout and "--merge-base" in blocked.stdout


def test_export_with_the_installed_exporter_from_the_command_line(site, tmp_path):
    from safetensors import safe_open

    from adaptkit.testing import kit_workspace

    model, adapter = kit_workspace(tmp_path)
    out = tmp_path / "deltas"
    res = _adaptkit(
        site, "export", "--dense-delta", "--model", model, "-a", adapter, "-o", out,
        "--delta-dtype", "float16", "--json",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["exporter"] == "dense-delta" and report["options"] == {"delta_dtype": "float16"}
    assert report == json.loads((out / "export-report.json").read_text())
    with safe_open(out / "deltas.safetensors", "pt") as f:
        assert len(list(f.keys())) == report["targets"] == 4
    res = _adaptkit(
        site, "export", "--dense-delta", "--model", model, "-a", adapter, "-o", tmp_path / "bad",
        "--delta-dtype", "float64",
    )  # fmt: skip
    assert res.returncode == 2 and not (tmp_path / "bad").exists()
    assert res.stderr == (
        "error: --delta-dtype: unknown value 'float64'; valid: float32, float16, bfloat16\n"
    )
