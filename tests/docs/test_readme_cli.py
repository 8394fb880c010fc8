"""Every `$ adaptkit ...` line of the README's tour runs, in a sandbox holding the files it
names (a tiny base model in ./base, PEFT dirs a_dir/b_dir, train.jsonl, the examples)."""

import json
import re
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO


def _commands():
    text = (REPO / "README.md").read_text()
    tour = text[text.index("## Tour") : text.index("Every user error")]
    cmds = []
    for line in tour.splitlines():
        if line.startswith("$ adaptkit "):
            cmd = line[2:].split("  #")[0].strip()
            if "..." not in cmd:
                cmds.append(cmd)
    return cmds


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from adaptkit.cli import main
    from adaptkit.tiny import byte_tokenizer

    box = tmp_path_factory.mktemp("readme")
    shutil.copytree(
        REPO / "examples", box / "examples", ignore=shutil.ignore_patterns("combined.safetensors")
    )
    # A base that fits the example adapters (hidden 64, 2 layers, 4 KV heads).
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=259,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
    )
    LlamaForCausalLM(cfg).save_pretrained(box / "base", safe_serialization=True)
    byte_tokenizer().save_pretrained(box / "base")
    for name in ("a", "b"):
        (box / f"{name}.yaml").write_text(
            (box / "examples" / f"{name}.yaml")
            .read_text()
            .replace("adapter: adapters/", "adapter: examples/adapters/")
        )
    assert main(["convert", str(box / "a.yaml"), "-o", str(box / "a_dir"), "--to", "peft"]) == 0
    assert main(["convert", str(box / "b.yaml"), "-o", str(box / "b_dir"), "--to", "peft"]) == 0
    shutil.copytree(box / "a_dir", box / "peft_adapter_dir")
    (box / "train.jsonl").write_text("".join(json.dumps({"text": f"word{i} " * 4}) + "\n" for i in range(16)))
    return box


def test_the_tour_has_commands():
    assert len(_commands()) >= 12


@pytest.mark.parametrize("cmd", _commands())
def test_readme_command_runs(sandbox, cmd):
    args = []
    for a in cmd.split()[1:]:  # the shell would expand globs
        args += sorted(str(p.relative_to(sandbox)) for p in sandbox.glob(a)) if "*" in a else [a]
    if args[0] == "train":
        args += ["--batch-size", "4"]  # keep the test fast; the README line itself is unchanged
        args = [a if a != "300" else "3" for a in args]
    res = subprocess.run(
        [sys.executable, "-m", "adaptkit", *args], cwd=sandbox, capture_output=True, text=True, timeout=600
    )
    assert res.returncode == 0, f"{cmd}\n{res.stderr[-2000:]}"


def test_readme_error_example_is_what_the_cli_prints(sandbox):
    text = (REPO / "README.md").read_text()
    m = re.search(
        r"\$ (adaptkit combine a\.yaml b\.yaml -s ties -p density=2 -o x\.safetensors)\n(error: .*)", text
    )
    assert m
    res = subprocess.run(
        [sys.executable, "-m", "adaptkit", *m.group(1).split()[1:]],
        cwd=sandbox,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 2 and res.stderr.strip() == m.group(2)
    assert not (sandbox / "x.safetensors").exists()
