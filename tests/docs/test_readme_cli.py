"""Every `adaptkit ...` command in the README's tour and in the docs' bash blocks runs, in a
sandbox holding the files they name (a tiny base model in ./base, PEFT dirs a_dir/b_dir,
train.jsonl, a train recipe, the examples). One sandbox per document. Commands run in-process
(`adaptkit.cli.main`); the error example runs as a real process, exit code and stderr."""

import json
import re
import shutil
import subprocess
import sys

import pytest

from tests.helpers import REPO
from tests.helpers.models import tiny_llama

DOCS_WITH_COMMANDS = ("docs/training.md", "docs/export.md")


def _commands():
    text = (REPO / "README.md").read_text()
    tour = text[text.index("## Tour") : text.index("Every user error")]
    cmds = [
        ("README.md", line[2:].split("  #")[0].strip())
        for line in tour.splitlines()
        if line.startswith("$ adaptkit ")
    ]
    for doc in DOCS_WITH_COMMANDS:
        for block in re.findall(r"```bash\n(.*?)```", (REPO / doc).read_text(), re.S):
            for line in block.replace("\\\n", " ").splitlines():
                if line.startswith("adaptkit "):
                    cmds.append((doc, " ".join(line.split("  #")[0].split())))
    return [(doc, cmd) for doc, cmd in cmds if "..." not in cmd]


@pytest.fixture(scope="module")
def sandboxes(tmp_path_factory):
    """``sandboxes(doc)``: the sandbox of one document, built on first use."""
    made: dict = {}

    def get(doc):
        if doc not in made:
            made[doc] = _make_sandbox(tmp_path_factory)
        return made[doc]

    return get


def _make_sandbox(tmp_path_factory):
    from adaptkit.cli import main
    from adaptkit.demo.tiny import byte_tokenizer

    box = tmp_path_factory.mktemp("readme")
    shutil.copytree(
        REPO / "examples", box / "examples", ignore=shutil.ignore_patterns("combined.safetensors")
    )
    # A base that fits the example adapters (hidden 64, 2 layers, 4 KV heads).
    base = tiny_llama(vocab_size=259, hidden_size=64, intermediate_size=128, num_key_value_heads=4)
    base.save_pretrained(box / "base", safe_serialization=True)
    byte_tokenizer().save_pretrained(box / "base")
    # The GGUF base the llama.cpp commands run (float32 here: the commands are what is checked).
    from tests.helpers.gguf_base import write_base_gguf

    write_base_gguf(box / "base", box / "base-q4_k_m.gguf")
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
    (box / "recipe.yaml").write_text(
        "model: base\ndata: train.jsonl\noutput: recipe-skill.safetensors\n"
        "rank: 4\nmax_steps: 3\nbatch_size: 4\n"
    )
    return box


def test_the_tour_has_commands():
    docs = {doc for doc, _ in _commands()}
    assert len(_commands()) >= 16 and docs == {"README.md", *DOCS_WITH_COMMANDS}


@pytest.fixture(scope="module")
def outputs():
    """What each command run so far wrote, by the command less its ``-o`` value."""
    return {}


@pytest.mark.parametrize("case", _commands(), ids=lambda c: f"{c[0]}: {c[1]}")
def test_doc_command_runs(sandboxes, outputs, run_cli, monkeypatch, case):
    doc, cmd = case
    sandbox = sandboxes(doc)
    args = []
    for a in cmd.split()[1:]:  # the shell would expand globs
        args += sorted(str(p.relative_to(sandbox)) for p in sandbox.glob(a)) if "*" in a else [a]
    if args[0] == "train":  # keep the test fast; the documented line itself is unchanged
        args = [a if a not in ("300", "500") else "3" for a in args]
        args += ["--batch-size", "4"] if "--batch-size" not in args else []
        args = [a if a != "100" else "2" for a in args]
    out = args[args.index("-o") + 1] if "-o" in args else None
    same = tuple(a if a != out else "OUT" for a in args)
    if out and same in outputs:
        # The same command (flags and inputs; the sandboxes are built alike) ran for another
        # document: an export takes seconds, so this sandbox gets a copy of its output.
        copy = shutil.copytree if outputs[same].is_dir() else shutil.copy2
        copy(outputs[same], sandbox / out)
        return
    # In-process, as a user's shell runs it but without paying the imports per command.
    monkeypatch.chdir(sandbox)
    code, _, err = run_cli(*args)
    assert code == 0, f"{cmd}\n{err[-2000:]}"
    if out:
        outputs[same] = sandbox / out


def test_readme_error_example_is_what_the_cli_prints(sandboxes):
    sandbox = sandboxes("README.md")
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
