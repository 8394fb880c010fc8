"""Canaries for every code-execution path of a downloaded folder, in one place.

Three kinds of folder a user downloads — a model folder, a Hugging Face cache, an export — each
planted with three kinds of code — a Python module, a native library named like an extension
module (its constructor runs on ``dlopen``), and an ``auto_map`` naming a Python file — and each
used the way a user would: as the working directory of ``python -m adaptkit``, as the
``--model`` of a generation export (whose builder runs in a child process, here from a Hub
cache), and as the folder ``adaptkit generate`` runs. Every planted file writes a canary when
it runs; none may.

The other half of each mechanism (a refused ``auto_map``, ``custom_ops_library``, a link out)
is tested case by case in ``test_model_folders.py`` and ``test_export_folders.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from adaptkit import save_adapter
from tests.helpers.adapters import make_adapter
from tests.helpers.files import COMMIT, canary_library, hub_cache

Q = "model.layers.0.self_attn.q_proj"
#: Imported by the parent process on every command (__future__, pluggy, yaml, click, numpy) or by the
#: builder child (onnx, onnx_ir, sympy): shadowing them is how code would get in.
PY_MODULES = ("__future__", "pluggy", "yaml", "click", "onnx_ir", "sympy")
SO_MODULES = ("numpy", "onnx")


def plant(folder: Path, canaries: Path, auto_map_in: str = "config.json") -> None:
    """Python modules, native extension modules and an ``auto_map`` (in ``auto_map_in``) into
    ``folder``; each leaves a file in ``canaries`` named after itself if it ever runs.

    The ``auto_map`` sits beside a class transformers has built in (a Llama config, as many
    published checkpoints ship): adaptkit ignores it with a note and goes on, so the command
    runs to its end. An ``auto_map`` only its own code could load is refused up front
    (``test_model_folders.py``)."""
    for name in PY_MODULES:
        (folder / f"{name}.py").write_text(f"open({str(canaries / name)!r}, 'w').write('ran')\n")
    for name in SO_MODULES:
        canary_library(folder / f"{name}{sysconfig.get_config_var('EXT_SUFFIX')}", canaries / name)
    (folder / "custom_tokenizer.py").write_text(
        f"open({str(canaries / 'auto_map')!r}, 'w').write('ran')\nclass Custom: pass\n"
    )
    config = folder / auto_map_in
    data = json.loads(config.read_text()) if config.is_file() else {}
    key = "AutoTokenizer" if auto_map_in == "tokenizer_config.json" else "AutoModelForCausalLM"
    data["auto_map"] = {key: "custom_tokenizer.Custom"}
    config.write_text(json.dumps(data))


def adaptkit(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m adaptkit ARGS`` run from ``cwd``: the module form puts ``cwd`` on sys.path."""
    return subprocess.run(
        [sys.executable, "-m", "adaptkit", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny Llama as a model folder and as a Hub cache snapshot, both planted, and an adapter."""
    from tests.helpers.models import tiny_llama

    root = tmp_path_factory.mktemp("canaries")
    canaries = root / "canaries"
    canaries.mkdir()
    model = root / "model"
    tiny_llama(hidden_size=64, intermediate_size=96, num_attention_heads=4).save_pretrained(model)
    save_adapter(make_adapter(0, shapes={Q: (64, 64, 4)}), root / "a.safetensors")
    snapshot = hub_cache(root / "hub", model) / "snapshots" / COMMIT
    plant(model, canaries)
    (snapshot / "config.json").unlink()  # edited in place below, as a hostile upload would be
    shutil.copy(model / "config.json", snapshot / "config.json")
    plant(snapshot, canaries)
    return {"root": root, "canaries": canaries, "model": model, "snapshot": snapshot}


def ran(world) -> list[str]:
    return sorted(p.name for p in world["canaries"].iterdir())


def test_the_planted_code_does_run_when_imported(world, tmp_path):
    """The canaries work: with the folder on sys.path, each module leaves its file."""
    probe = tmp_path / "probe"
    probe.mkdir()
    plant(probe, probe)
    names = [*PY_MODULES, *SO_MODULES, "custom_tokenizer"]
    script = (
        "import importlib, sys\n"
        "for n in sys.argv[1:]:\n"
        "    try: importlib.import_module(n)\n"
        "    except Exception: pass\n"
    )
    subprocess.run(
        [sys.executable, "-c", script, *names],
        cwd=probe,
        env={**os.environ, "PYTHONPATH": str(probe)},
        check=True,
        stdin=subprocess.DEVNULL,
    )
    expected = sorted([*PY_MODULES, *(SO_MODULES if shutil.which("cc") else ()), "auto_map"])
    assert sorted(p.name for p in probe.iterdir() if "." not in p.name) == expected


def test_a_model_folder_runs_nothing(world):
    """``cd model && python -m adaptkit ...``: the parent process imports nothing from it. (The
    builder child's side is the Hub cache test below and ``test_model_folders.py``.)"""
    model = world["model"]
    for args in (
        ["inspect", "../a.safetensors", "--model", "."],
        ["export", "--merged", "--model", ".", "-a", "../a.safetensors", "-o", "../merged"],
    ):
        res = adaptkit(model, *args)
        assert res.returncode == 0, res.stderr[-2000:]
        assert ran(world) == [], (args, res.stderr[-2000:])
    assert not any((world["root"] / "merged" / f"{n}.py").exists() for n in PY_MODULES)  # no code copied


def test_a_hub_cache_runs_nothing(world):
    """A Hub id resolved through a planted cache, run from inside its snapshot."""
    env = {"HF_HUB_CACHE": str(world["root"] / "hub"), "HF_HUB_OFFLINE": "1"}
    args = ["export", "--onnx", "--graph", "generation", "--no-verify", "--model", "org/tiny"]
    res = adaptkit(
        world["snapshot"],
        *args,
        "-a",
        str(world["root"] / "a.safetensors"),
        "-o",
        str(world["root"] / "hub-onnx"),
        env=env,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert ran(world) == []
    assert not any((world["root"] / "hub-onnx" / f"{n}.py").exists() for n in PY_MODULES)


def test_an_export_folder_runs_nothing(world):
    """``cd export && python -m adaptkit generate .``: the folder's own files are vetted, and
    nothing in it is imported; the tokenizer's ``auto_map`` is never followed."""
    export = world["root"] / "hub-onnx"
    if not export.is_dir():
        pytest.skip("needs the Hub cache's export")
    plant(export, world["canaries"], auto_map_in="tokenizer_config.json")
    res = adaptkit(export, "generate", ".", "--input-ids", "1,2,3", "--max-new-tokens", "2", "--json")
    assert ran(world) == [], res.stderr[-2000:]
    assert res.returncode in (0, 2), res.stderr[-2000:]
    if res.returncode == 2:  # refused: one line, naming what it refused
        errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error: ")]
        assert len(errors) == 1 and "Traceback" not in res.stderr, res.stderr[-2000:]
