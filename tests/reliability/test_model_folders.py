"""Model folders and Hugging Face caches are untrusted input: nothing in them runs, nothing
outside them is read, and an odd value is one `error:` line naming the file and key.

The mechanisms: the builder child runs with no current-directory entry on ``sys.path``, in our
own scratch folder, with no stdin (adaptkit_onnx.generation.builder.run_builder); remote code is never
trusted and an ``auto_map`` that would need it is refused up front
(adaptkit.io.model_config.check_no_remote_code); every entry of a model folder or Hub snapshot must
lie inside it or its repository's blobs/ (check_contained, _check_hub_ref); the config fields
adaptkit computes with are typed and ranged (check_config_fields); scratch folders carry
their writer's pid and a dead writer's are swept (adaptkit.io.atomic.sweep_stale_scratch).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from adaptkit import save_adapter
from tests.helpers import REPO
from tests.helpers.adapters import make_adapter
from tests.helpers.cli import assert_refused as _refused
from tests.helpers.files import COMMIT, hub_cache

Q = "model.layers.0.self_attn.q_proj"


def canary_module(canary: Path) -> str:
    """Python source that leaves ``canary`` behind if it is ever imported."""
    return f"open({str(canary)!r}, 'w').write('ran')\n"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """The smallest Llama the generation builder takes (head size 16), no tokenizer."""
    from tests.helpers.models import tiny_llama

    folder = tmp_path_factory.mktemp("base") / "model"
    tiny_llama(hidden_size=64, intermediate_size=96, num_attention_heads=4).save_pretrained(folder)
    return folder


@pytest.fixture
def box(tmp_path, monkeypatch, base):
    shutil.copytree(base, tmp_path / "model")
    save_adapter(make_adapter(0, shapes={Q: (64, 64, 4)}), tmp_path / "a.safetensors")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _edit_config(folder: Path, **changes):
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


MERGED = ["export", "--merged", "--model", "model", "-a", "a.safetensors", "-o", "out"]
ONNX = ["export", "--onnx", "--model", "model", "-a", "a.safetensors", "-o", "out"]


# --- 1. a Python file in the working directory is not imported by the builder child ----------


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.fixture(scope="module")
def generation_export(tmp_path_factory, base):
    """One real `export --onnx` (generation graph) from inside a model folder that ships
    ``onnx_ir.py`` and ``sympy.py`` canaries, beside stale scratch folders of a dead and a
    live writer."""
    root = tmp_path_factory.mktemp("cwd")
    model = root / "model"
    shutil.copytree(base, model)
    canary = root / "CANARY"
    for name in ("onnx_ir.py", "sympy.py"):
        (model / name).write_text(canary_module(canary))
    save_adapter(make_adapter(0, shapes={Q: (64, 64, 4)}), root / "a.safetensors")
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    dead = _dead_pid()
    scratch = {
        "dead": root / f".adaptkit-scratch.{dead}.abc123",
        "live": root / f".adaptkit-scratch.{live.pid}.def456",
        "named without a pid": root / ".adaptkit-scratch-old",
    }
    for folder in scratch.values():
        (folder / "merged").mkdir(parents=True)
        (folder / "merged" / "model.safetensors").write_bytes(b"\0" * 4096)
    from adaptkit.cli import main

    cwd = os.getcwd()
    os.chdir(model)  # `cd downloaded-model && adaptkit export --onnx --model . ...`
    try:
        args = ["export", "--onnx", "--graph", "generation", "--no-verify", "--model", "."]
        code = main([*args, "-a", "../a.safetensors", "-o", "../out"])
    finally:
        os.chdir(cwd)
        live.kill()
        live.wait()
    return {"code": code, "root": root, "canary": canary, "scratch": scratch}


def test_the_builder_child_imports_nothing_from_the_working_directory(generation_export):
    assert generation_export["code"] == 0
    assert (generation_export["root"] / "out" / "model.onnx").is_file()
    assert not generation_export["canary"].exists()


def test_a_killed_writers_scratch_is_swept_and_a_live_ones_kept(generation_export):
    scratch = generation_export["scratch"]
    assert not scratch["dead"].exists()
    assert scratch["live"].is_dir()
    assert scratch["named without a pid"].is_dir()  # no pid to judge by: never guessed at
    left = [p.name for p in generation_export["root"].iterdir() if p.name.startswith(".adaptkit-scratch.")]
    assert left == [scratch["live"].name]  # the run's own scratch went with it


def test_scratch_folders_carry_their_writers_pid(tmp_path):
    from adaptkit.io.atomic import scratch_directory

    with scratch_directory(tmp_path) as scratch:
        assert scratch.name.startswith(f".adaptkit-scratch.{os.getpid()}.")
        (scratch / "x").write_text("x")
    assert list(tmp_path.iterdir()) == []


def test_every_child_process_gets_an_empty_stdin():
    """No child adaptkit starts can read the user's terminal or a pipe (`yes | adaptkit ...`)."""
    import ast

    calls = []
    for path in [*REPO.joinpath("adaptkit").rglob("*.py"), *REPO.joinpath("plugins").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            func = getattr(node, "func", None)
            if getattr(func, "attr", None) in ("run", "Popen", "call") and (
                getattr(func.value, "id", None) == "subprocess"
            ):
                stdin = [k for k in node.keywords if k.arg == "stdin"]
                calls.append((path.name, ast.unparse(stdin[0].value) if stdin else None))
    assert calls and all(s == "subprocess.DEVNULL" for _, s in calls), calls


# --- 2. auto_map: remote code never runs ------------------------------------------------------


def _plant_auto_map(folder: Path, canary: Path, where: str = "config.json", model_type: str | None = None):
    """An ``auto_map`` in ``where`` naming ``custom_code.py``, a canary, shipped beside it."""
    (folder / "custom_code.py").write_text(canary_module(canary))
    if where == "config.json":
        changes = {"auto_map": {"AutoConfig": "custom_code.C", "AutoModelForCausalLM": "custom_code.M"}}
        _edit_config(folder, **changes, **({"model_type": model_type} if model_type else {}))
    else:
        tok = {"tokenizer_class": "CustomTokenizer", "auto_map": {"AutoTokenizer": ["custom_code.T", None]}}
        (folder / "tokenizer_config.json").write_text(json.dumps(tok))


@pytest.mark.parametrize("command", [MERGED, ONNX, ["inspect", "a.safetensors", "--model", "model"]])
@pytest.mark.parametrize("where", ["config.json", "tokenizer_config.json"])
def test_an_auto_map_that_needs_its_code_is_refused(run_cli, box, command, where):
    _plant_auto_map(box / "model", box / "CANARY", where, model_type="custom")
    line = _refused(run_cli, box, command, [where, "auto_map", "never runs a model's code"])
    assert "custom_code" in line
    assert not (box / "CANARY").exists()


def test_a_config_with_trust_remote_code_true_is_one_line(run_cli, box):
    _plant_auto_map(box / "model", box / "CANARY", model_type="custom")
    _edit_config(box / "model", trust_remote_code=True)
    _refused(run_cli, box, MERGED, ["config.json", "auto_map"])
    assert not (box / "CANARY").exists()


def test_an_auto_map_beside_a_built_in_class_is_ignored_with_a_note(run_cli, box):
    """Official Phi-3 checkpoints still carry an auto_map: the built-in class loads them."""
    _plant_auto_map(box / "model", box / "CANARY")
    code, _, err = run_cli(*MERGED)
    assert code == 0, err
    assert "auto_map ignored" in err
    assert not (box / "CANARY").exists()
    assert not (box / "out" / "custom_code.py").exists()  # code is never copied into an export


def test_the_builder_child_answers_no_trust_prompt(tmp_path, base):
    """`yes | adaptkit export --onnx`: the builder child used to load a tokenizer whose
    auto_map names a module in the folder with trust_remote_code unset, and the inherited
    stdin answered transformers' prompt. Now: no stdin, trust_remote_code=False."""
    src = tmp_path / "model"
    shutil.copytree(base, src)
    canary = tmp_path / "CANARY"
    _plant_auto_map(src, canary, "tokenizer_config.json")
    script = (
        "import sys; from pathlib import Path; from adaptkit_onnx.generation.builder import run_builder\n"
        "try:\n"
        "    run_builder(Path(sys.argv[1]), Path(sys.argv[2]), 'fp32', 'cpu', Path(sys.argv[3]))\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_MODULES_CACHE": str(tmp_path / "modules")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "plugins"), env.get("PYTHONPATH", "")])
    args = [str(src), str(tmp_path / "out"), str(tmp_path / "scratch")]
    result = subprocess.run(
        [sys.executable, "-c", script, *args], input="y\n" * 50, capture_output=True, text=True, env=env
    )
    assert "AdaptkitError" in result.stdout, result.stdout + result.stderr[-2000:]
    assert not canary.exists()


# --- 3. links out of a model folder or a Hub cache ---------------------------------------------


def _elsewhere(tmp_path_factory, base) -> Path:
    outside = tmp_path_factory.mktemp("elsewhere") / "model"
    shutil.copytree(base, outside)
    return outside


@pytest.mark.parametrize("name", ["config.json", "model.safetensors", "tokenizer.json", "notes.txt"])
@pytest.mark.parametrize("command", [MERGED, ONNX])
def test_a_model_folder_file_linking_outside_is_refused(run_cli, box, tmp_path_factory, base, name, command):
    outside = _elsewhere(tmp_path_factory, base)
    (outside / "tokenizer.json").write_text("{}")
    (outside / "notes.txt").write_text("a secret")
    target = box / "model" / name
    target.unlink(missing_ok=True)
    target.symlink_to(outside / name)
    _refused(run_cli, box, command, [name, "links outside the model folder"])


@pytest.mark.parametrize("depth", ["additional_chat_templates/evil.jinja", "a/b/c/notes.txt"])
def test_a_link_out_at_any_depth_is_refused(run_cli, box, tmp_path_factory, base, depth):
    """transformers reads ``additional_chat_templates/`` on its own: every level is checked."""
    outside = _elsewhere(tmp_path_factory, base)
    (outside / "secret.txt").write_text("a secret")
    target = box / "model" / depth
    target.parent.mkdir(parents=True)
    target.symlink_to(outside / "secret.txt")
    _refused(run_cli, box, MERGED, [target.name, "links outside the model folder"])


def test_a_linked_subfolder_leading_out_is_refused(run_cli, box, tmp_path_factory, base):
    (box / "model" / "additional_chat_templates").symlink_to(_elsewhere(tmp_path_factory, base))
    _refused(run_cli, box, MERGED, ["additional_chat_templates", "links outside the model folder"])


@pytest.fixture
def sharded(box):
    from tests.helpers.models import tiny_llama

    shutil.rmtree(box / "model")
    tiny_llama(hidden_size=64, intermediate_size=96).save_pretrained(box / "model", max_shard_size="40KB")
    assert not (box / "model" / "model.safetensors").exists()
    return box / "model" / "model.safetensors.index.json"


def test_a_sharded_checkpoint_is_read_through_its_checked_shards(run_cli, box, sharded):
    code, _, err = run_cli(*MERGED)
    assert code == 0, err


@pytest.mark.parametrize("name", ["../elsewhere.safetensors", "sub/model.safetensors", "other.safetensors"])
def test_a_weight_index_naming_an_unchecked_file_is_refused(run_cli, box, sharded, name):
    """transformers opens what ``weight_map`` names: only the shards whose headers were checked."""
    index = json.loads(sharded.read_text())
    first = next(iter(index["weight_map"]))
    index["weight_map"][first] = name
    sharded.write_text(json.dumps(index))
    (box / "model" / "sub").mkdir()
    for path in (box / "elsewhere.safetensors", box / "model" / "sub" / "model.safetensors"):
        path.write_bytes(b"\xff" * 64)  # a header that would never pass the strict reader
    (box / "model" / "other.safetensors").write_bytes(b"\xff" * 64)
    _refused(run_cli, box, MERGED, ["model.safetensors.index.json", "weight_map", name])


@pytest.fixture
def hub(box, base, monkeypatch):
    from huggingface_hub import constants

    cache = box / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return hub_cache(cache, base)


HUB_MERGED = ["export", "--merged", "--model", "org/tiny", "-a", "a.safetensors", "-o", "out"]


def test_a_hub_cache_resolves_through_its_blobs(run_cli, box, hub):
    code, _, err = run_cli(*HUB_MERGED)
    assert code == 0, err
    assert json.loads((box / "out" / "config.json").read_text())["model_type"] == "llama"


def _ref_with_dots(hub, outside):
    (hub / "refs" / "main").write_text(os.path.relpath(outside, hub / "snapshots"))


def _ref_absolute(hub, outside):
    (hub / "refs" / "main").write_text(str(outside))


def _ref_links_out(hub, outside):
    (outside.parent / "ref").write_text(COMMIT)
    (hub / "refs" / "main").unlink()
    (hub / "refs" / "main").symlink_to(outside.parent / "ref")


def _snapshot_links_out(hub, outside):
    shutil.rmtree(hub / "snapshots" / COMMIT)
    (hub / "snapshots" / COMMIT).symlink_to(outside)


def _file_links_out(name):
    def edit(hub, outside):
        (hub / "snapshots" / COMMIT / name).unlink()
        (hub / "snapshots" / COMMIT / name).symlink_to(outside / name)

    return edit


HUB_CASES = {
    "refs/main with ..": (_ref_with_dots, ["refs/main", "does not hold a commit id"]),
    "refs/main an absolute path": (_ref_absolute, ["refs/main", "does not hold a commit id"]),
    "refs/main a link out": (_ref_links_out, ["refs/main", "not a file inside the repository"]),
    "snapshot folder a link out": (_snapshot_links_out, ["leads outside its repository's cache"]),
    "config.json out of blobs/": (_file_links_out("config.json"), ["config.json", "links outside"]),
    "weights out of blobs/": (_file_links_out("model.safetensors"), ["model.safetensors", "links outside"]),
}


@pytest.mark.parametrize("case", HUB_CASES)
def test_a_hub_cache_leading_outside_is_refused(run_cli, box, hub, tmp_path_factory, base, case):
    edit, words = HUB_CASES[case]
    edit(hub, _elsewhere(tmp_path_factory, base))
    _refused(run_cli, box, HUB_MERGED, words)


def test_a_snapshot_given_as_a_folder_is_held_to_its_blobs(run_cli, box, hub, tmp_path_factory, base):
    snap = hub / "snapshots" / COMMIT
    _file_links_out("config.json")(hub, _elsewhere(tmp_path_factory, base))
    args = ["export", "--merged", "--model", snap, "-a", "a.safetensors", "-o", "out"]
    _refused(run_cli, box, args, ["config.json", "links outside the model folder or its repository's blobs/"])


@pytest.mark.parametrize("part", ["blobs", "snapshots", "refs"])
@pytest.mark.parametrize("given", ["hub id", "snapshot folder"])
def test_a_cache_whose_blobs_or_snapshots_link_out_is_refused(
    run_cli, box, hub, tmp_path_factory, part, given
):
    """A ``blobs`` linked to ``/`` would make any file "a blob" of the repository."""
    moved = tmp_path_factory.mktemp("moved") / part
    shutil.move(hub / part, moved)
    (hub / part).symlink_to(moved)
    snap = hub / "snapshots" / COMMIT
    args = (
        HUB_MERGED
        if given == "hub id"
        else ["export", "--merged", "--model", snap, "-a", "a.safetensors", "-o", "out"]
    )
    _refused(run_cli, box, args, [f"{part}/ is a link"])


def test_a_folder_only_named_like_a_cache_gets_no_blobs(run_cli, box, hub, tmp_path_factory, base):
    """``models--x/snapshots/<not a commit>``: a plain folder, held to itself."""
    snap = hub / "snapshots" / COMMIT
    fake = hub / "snapshots" / "not-a-commit"
    shutil.copytree(snap, fake, symlinks=True)
    args = ["export", "--merged", "--model", fake, "-a", "a.safetensors", "-o", "out"]
    _refused(run_cli, box, args, ["links outside the model folder"])


def test_a_hub_cache_auto_map_never_runs(run_cli, box, hub):
    snap = hub / "snapshots" / COMMIT
    config = json.loads((snap / "config.json").read_text())
    config.update(model_type="custom", auto_map={"AutoConfig": "custom_code.C"})
    (hub / "blobs" / "config").write_text(json.dumps(config))
    (snap / "config.json").unlink()
    (snap / "config.json").symlink_to(Path("..", "..", "blobs", "config"))
    (snap / "custom_code.py").write_text(canary_module(box / "CANARY"))
    _refused(run_cli, box, HUB_MERGED, ["config.json", "auto_map", "never runs a model's code"])
    assert not (box / "CANARY").exists()


# --- 4. odd config types: one line naming config.json and the key -----------------------------

CONFIG_CASES = {
    "architectures nested": ({"architectures": [["LlamaForCausalLM"]]}, "architectures"),
    "architectures a string": ({"architectures": "LlamaForCausalLM"}, "architectures"),
    "zero heads": ({"num_attention_heads": 0}, "num_attention_heads"),
    "heads a word": ({"num_attention_heads": "four"}, "num_attention_heads"),
    "heads a boolean": ({"num_attention_heads": True}, "num_attention_heads"),
    "head_dim a string": ({"head_dim": "16"}, "head_dim"),
    "negative hidden_size": ({"hidden_size": -1}, "hidden_size"),
    "vocab_size a float": ({"vocab_size": 128.5}, "vocab_size"),
    "vocab_size a list": ({"vocab_size": [128]}, "vocab_size"),
    "kv heads not dividing heads": ({"num_key_value_heads": 3}, "num_key_value_heads"),
    "heads of size 0": ({"hidden_size": 2, "head_dim": None}, "hidden_size"),
    "eos a string": ({"eos_token_id": "</s>"}, "eos_token_id"),
    "huge layer count": ({"num_hidden_layers": 10**12}, "num_hidden_layers"),
    "nested text_config": ({"text_config": {"num_attention_heads": 0}}, "text_config.num_attention_heads"),
}


@pytest.mark.parametrize(
    "command", [MERGED, ONNX, [*ONNX, "--graph", "logits"]], ids=["merged", "onnx", "logits"]
)
@pytest.mark.parametrize("case", CONFIG_CASES)
def test_odd_config_values_are_one_line(run_cli, box, case, command):
    changes, key = CONFIG_CASES[case]
    _edit_config(box / "model", **changes)
    _refused(run_cli, box, command, ["config.json", key])


@pytest.mark.parametrize("name", ["AutoTokenizer", "__class__", "LlamaConfig"])
def test_an_architecture_that_is_not_a_model_class_is_not_built(box, name):
    """The streamed loader (``export --onnx`` parity, the qlora backend) builds the class
    ``architectures`` names: only a model class of transformers' own, else transformers' loader."""
    from adaptkit.nn.streamed_load import plan

    _edit_config(box / "model", architectures=[name])
    assert plan(box / "model") is None
    _edit_config(box / "model", architectures=[name, "LlamaForCausalLM"])
    assert plan(box / "model") is not None


# --- 6. a symlink loop -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "recipe",
    [
        "adapters: [loop.safetensors, a.safetensors]\noutput: o.safetensors\n",
        "adapters: [m.yaml, a.safetensors]\noutput: o.safetensors\n",
        "adapters: [a.safetensors, a.safetensors]\noutput: loopdir/o.safetensors\n",
    ],
    ids=["adapter", "manifest's adapter", "output folder"],
)
def test_a_symlink_loop_in_a_recipe_is_one_line(run_cli, box, recipe):
    (box / "loop.safetensors").symlink_to("loop.safetensors")
    (box / "loopdir").symlink_to("loopdir")
    (box / "m.yaml").write_text("adapter: loop.safetensors\n")
    (box / "r.yaml").write_text(recipe)
    _refused(run_cli, box, ["combine", "r.yaml"], [])


def test_a_symlink_loop_in_a_model_folder_is_one_line(run_cli, box):
    (box / "model" / "config.json").unlink()
    (box / "model" / "config.json").symlink_to("config.json")
    _refused(run_cli, box, MERGED, ["config.json"])


# --- 7. weights that do not match config.json: refused, never run with random weights ---------


def _drop_layer_1(folder: Path):
    from safetensors.torch import load_file, save_file

    tensors = load_file(folder / "model.safetensors")
    kept = {k: v for k, v in tensors.items() if not k.startswith("model.layers.1.")}
    save_file(kept, folder / "model.safetensors", metadata={"format": "pt"})


WEIGHT_CASES = {
    "layer 1 removed": (_drop_layer_1, "lacks model.layers.1."),
    "more layers in config": (lambda f: _edit_config(f, num_hidden_layers=5), "lacks model.layers.2."),
    "another model_type": (
        lambda f: _edit_config(f, model_type="gpt2", architectures=["GPT2LMHeadModel"]),
        "lacks transformer.",
    ),
    "wider in config": (lambda f: _edit_config(f, intermediate_size=128), "another shape"),
}
WEIGHT_COMMANDS = {
    "merged": MERGED,
    "logits": [*ONNX, "--graph", "logits", "--no-verify"],
    "generate": ["generate", "model", "--input-ids", "1,2", "--max-new-tokens", "2"],
    "train": ["train", "--model", "model", "--data", "data.jsonl", "-o", "t.safetensors", "--max-steps", "1"],
}


@pytest.mark.parametrize("command", WEIGHT_COMMANDS)
@pytest.mark.parametrize("case", WEIGHT_CASES)
def test_weights_that_do_not_match_the_config_are_refused(run_cli, box, case, command):
    edit, words = WEIGHT_CASES[case]
    (box / "data.jsonl").write_text('{"input_ids": [1, 2, 3, 4]}\n' * 4)
    edit(box / "model")
    _refused(run_cli, box, WEIGHT_COMMANDS[command], ["model", words, "randomly initialised"])


def test_a_tied_checkpoint_without_lm_head_loads(run_cli, box):
    """transformers does not store a tied ``lm_head.weight``: that is no missing tensor."""
    from tests.helpers.models import tiny_llama

    shutil.rmtree(box / "model")
    model = tiny_llama(hidden_size=64, intermediate_size=96, tie_word_embeddings=True)
    model.save_pretrained(box / "model")
    from adaptkit.io.safetensors_strict import checked_header

    assert "lm_head.weight" not in checked_header(box / "model" / "model.safetensors")[1]
    code, _, err = run_cli(*MERGED)
    assert code == 0, err
    code, _, err = run_cli("generate", "model", "--input-ids", "1,2", "--max-new-tokens", "2")
    assert code == 0, err


@pytest.mark.parametrize(
    "changes",
    [{"rope_scaling": "abc"}, {"rms_norm_eps": "x"}, {"hidden_act": "nonexistent"}],
    ids=["rope_scaling", "rms_norm_eps", "hidden_act"],
)
def test_a_config_transformers_rejects_is_named_as_such(run_cli, box, changes):
    _edit_config(box / "model", **changes)
    line = _refused(run_cli, box, MERGED, ["config.json"])
    assert "out×in" not in line
