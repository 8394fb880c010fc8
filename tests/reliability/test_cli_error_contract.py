"""The CLI error contract on every command: exit code 2, a single `error:` line naming the
file or key, no traceback, nothing written."""

import pytest

from adaptkit import save_adapter
from tests.helpers.adapters import make_adapter


@pytest.fixture
def box(tmp_path, monkeypatch):
    save_adapter(make_adapter(), tmp_path / "good.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 3)
    (tmp_path / "bad.yaml").write_text("adapter: good.safetensors\nadapter: again\n")
    (tmp_path / "file.txt").write_text("not a folder")
    (tmp_path / "data.jsonl").write_text('{"input_ids": [1, 2]}\n')
    monkeypatch.chdir(tmp_path)
    return tmp_path


CASES = [
    (["demo", "-o", "file.txt"], "file.txt"),
    (["combine", "bad.safetensors", "good.safetensors", "-o", "o.safetensors"], "bad.safetensors"),
    (["combine", "bad.yaml", "-o", "o.safetensors"], "duplicate key 'adapter'"),
    (["combine", "good.safetensors", "-o", "o.safetensors", "-p", "x=1"], "unknown parameter 'x'"),
    (["convert", "bad.safetensors", "-o", "o", "--to", "peft"], "bad.safetensors"),
    (["convert", "good.safetensors", "-o", "o", "--to", "nope"], "unknown format 'nope'"),
    (["train", "--model", "missing_dir", "--data", "data.jsonl", "-o", "o.safetensors"], "missing_dir"),
    (
        ["train", "--model", "missing_dir", "--data", "data.jsonl", "-o", "o.safetensors", "--backend", "x"],
        "unknown backend 'x'",
    ),
    (["export", "--onnx", "--model", "missing_dir", "-a", "good.safetensors", "-o", "o"], "missing_dir"),
    # The model is vetted before any adapter loads (a recipe may tune for minutes first).
    (["export", "--merged", "--model", "missing_dir", "-a", "bad.safetensors", "-o", "o"], "missing_dir"),
    (["inspect", "bad.safetensors"], "bad.safetensors"),
    (["inspect", "good.safetensors", "--plot", "p.png"], "--plot needs --model"),
    (["validate", "bad.safetensors"], "1 of 1 files have problems"),
    (["nonsense"], "No such command"),
]


@pytest.mark.parametrize(("args", "needle"), CASES, ids=[" ".join(a[:2]) for a, _ in CASES])
def test_every_command_fails_cleanly(run_cli, box, args, needle):
    before = sorted(p.name for p in box.iterdir())
    code, _, err = run_cli(*args)
    assert code == 2
    errors = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and needle in errors[0], err
    assert "Traceback" not in err
    assert sorted(p.name for p in box.iterdir()) == before


def test_plugins_env_error(run_cli, monkeypatch):
    monkeypatch.setenv("ADAPTKIT_LOAD_PLUGINS", "nope")
    code, _, err = run_cli("plugins")
    assert code == 2 and err.startswith("error: ") and "unknown plugin 'nope'" in err
