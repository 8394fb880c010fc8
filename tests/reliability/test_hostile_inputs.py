"""Hostile inputs that used to end in a traceback, a silent no-op or an unbounded cost: each
must be one `error:` line (exit 2) naming the file, with nothing written.

The mechanisms: one bounded strict JSON layer (adaptkit.io.jsonio), one strict YAML loader
(adaptkit.io.yamlio), model folders vetted before transformers parses them
(adaptkit.io.models.check_model_files), strict safetensors headers (shape × dtype = byte span),
requests checked before any tensor is loaded (adaptkit.combine.check_request)."""

import json
import shutil
import struct
import tracemalloc

import pytest

from adaptkit import save_adapter
from adaptkit.errors import MAX_LINE_CHARS, AdaptkitError, FormatError
from tests.helpers.adapters import make_adapter
from tests.helpers.cli import assert_refused as _refused
from tests.helpers.files import raw_safetensors
from tests.helpers.models import tiny_llama

DEEP = "[" * 100_000 + "]" * 100_000
BIGINT = "1" * 5000
Q = "model.layers.0.self_attn.q_proj"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    folder = tmp_path_factory.mktemp("base") / "model"
    tiny_llama().save_pretrained(folder)
    return folder


@pytest.fixture
def box(tmp_path, monkeypatch, base):
    shutil.copytree(base, tmp_path / "model")
    shapes = {Q: (32, 32, 4)}
    save_adapter(make_adapter(0, shapes=shapes), tmp_path / "a.safetensors")
    save_adapter(make_adapter(1, shapes=shapes), tmp_path / "b.safetensors")
    (tmp_path / "data.jsonl").write_text('{"input_ids": [1, 2, 3, 4]}\n' * 4)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _rewrite_header(path, edit):
    blob = path.read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n])
    edit(header)
    path.write_bytes(raw_safetensors(header, blob[8 + n :]))


# --- JSON: nesting 100k deep and integers over 4,300 digits, wherever JSON is read --------------


def _deep_header(box):
    (box / "x.safetensors").write_bytes(raw_safetensors({}, b"", header_text='{"t": ' + DEEP + "}"))
    return ["inspect", "x.safetensors"]


def _bigint_manifest(box):
    def edit(h):
        key = next(iter(h["__metadata__"]))
        h["__metadata__"][key] = '{"format_version": ' + BIGINT + "}"

    _rewrite_header(box / "a.safetensors", edit)
    return ["inspect", "a.safetensors"]


def _peft_config(text):
    def make(box, run_cli):
        assert run_cli("convert", "a.safetensors", "--to", "peft", "-o", "peft")[0] == 0
        (box / "peft" / "adapter_config.json").write_text(text)
        return ["inspect", "peft"]

    return make


def _jsonl(text):
    def make(box):
        (box / "data.jsonl").write_text(text + "\n")
        return ["train", "--model", "model", "--data", "data.jsonl", "-o", "t.safetensors"]

    return make


JSON_CASES = {
    "deep safetensors header": (_deep_header, "nested deeper than 64 levels"),
    "huge integer in a manifest": (_bigint_manifest, "integer of more than 4300 digits"),
    "deep training JSONL": (_jsonl(DEEP), "line 1: JSON line is nested deeper"),
    "huge integer in training JSONL": (_jsonl('{"input_ids": [' + BIGINT + "]}"), "more than 4300 digits"),
}


@pytest.mark.parametrize("case", JSON_CASES)
def test_hostile_json(run_cli, box, case):
    make, words = JSON_CASES[case]
    _refused(run_cli, box, make(box), words)


@pytest.mark.parametrize(
    ("text", "words"), [(DEEP, "nested deeper"), ('{"r": ' + BIGINT + "}", "more than 4300 digits")]
)
def test_hostile_adapter_config(run_cli, box, text, words):
    args = _peft_config(text)(box, run_cli)
    _refused(run_cli, box, args, words)


# --- model folders: config.json and weight headers, for every command that reads a model -------


def _config(text: str | bytes):
    def edit(folder):
        target = folder / "config.json"
        target.write_bytes(text if isinstance(text, bytes) else text.encode())

    return edit


def _weights(fn):
    def edit(folder):
        _rewrite_header(folder / "model.safetensors", fn)

    return edit


def _no_shape(h):
    del h[f"{Q}.weight"]["shape"]


def _f8(h):
    h[f"{Q}.weight"]["dtype"] = "F8_E4M3"


def _half_shape(h):
    h[f"{Q}.weight"]["shape"] = [32, 16]


MODEL_CASES = {
    "malformed config.json": (_config("{nope"), "config.json is not valid JSON"),
    "list config.json": (_config("[1, 2]"), "must be an object at the top level, not list"),
    "non-UTF-8 config.json": (_config(b'{"a": "\xff"}'), "config.json is not UTF-8"),
    "deep config.json": (_config('{"x": ' + DEEP + "}"), "nested deeper"),
    "header entry without shape": (_weights(_no_shape), "shape None is not a list of sizes"),
    "F8 weight in an F32 span": (_weights(_f8), "F8_E4M3 [32, 32] needs 1024 bytes but spans 4096"),
    "shape disagrees with span": (_weights(_half_shape), "F32 [32, 16] needs 2048 bytes but spans 4096"),
}
COMMANDS = {
    "export --merged": ["export", "--merged", "--model", "model", "-a", "a.safetensors", "-o", "out"],
    "export --onnx": ["export", "--onnx", "--model", "model", "-a", "a.safetensors", "-o", "out"],
    "inspect --model": ["inspect", "a.safetensors", "--model", "model"],
    "train": ["train", "--model", "model", "--data", "data.jsonl", "-o", "t.safetensors"],
    "combine --tune": [
        *("combine", "a.safetensors", "b.safetensors", "--tune", "data.jsonl", "--model", "model"),
        *("-o", "c.safetensors"),
    ],
}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("case", MODEL_CASES)
def test_hostile_model_folder(run_cli, box, case, command):
    edit, words = MODEL_CASES[case]
    edit(box / "model")
    _refused(run_cli, box, COMMANDS[command], words)


def test_config_field_of_the_wrong_type(run_cli, box):
    config = json.loads((box / "model" / "config.json").read_text())
    (box / "model" / "config.json").write_text(json.dumps({**config, "hidden_size": "abc"}))
    _refused(run_cli, box, COMMANDS["train"], "config.json: hidden_size: must be a positive integer")


def test_broken_tokenizer(run_cli, box):
    (box / "model" / "tokenizer.json").write_text("{broken")
    (box / "data.jsonl").write_text('{"text": "hello"}\n')
    _refused(run_cli, box, COMMANDS["train"], "cannot load the tokenizer")


def test_oversized_config_is_not_read_or_copied(run_cli, box):
    with open(box / "model" / "config.json", "r+b") as fh:
        fh.truncate(1 << 30)  # sparse: 1 GiB that costs no disk
    tracemalloc.start()
    try:
        _refused(run_cli, box, COMMANDS["export --merged"], "larger than the 16777216-byte cap")
        assert tracemalloc.get_traced_memory()[1] < 64 << 20
    finally:
        tracemalloc.stop()


# --- numbers: NaN/Inf parameters, overflowing weights, infinite norms -----------------------------


@pytest.mark.parametrize(
    ("recipe", "words"),
    [
        ("strategy: slerp\nparams: {t: .nan}", "non-finite number '.nan'"),
        ("strategy: ties\nparams: {density: .inf}", "non-finite number '.inf'"),
        ("strategy: linear", "non-finite number '-.inf'"),
    ],
)
def test_non_finite_numbers_in_recipes(run_cli, box, recipe, words):
    weight = "-.inf" if "linear" in recipe else "1"
    adapters = f"[{{adapter: a.safetensors, weight: {weight}}}, b.safetensors]"
    (box / "r.yaml").write_text(f"adapters: {adapters}\n{recipe}\noutput: o.safetensors\n")
    _refused(run_cli, box, ["combine", "r.yaml"], words)


def test_non_finite_parameters_from_python():
    from adaptkit.combine import check_request
    from adaptkit.plugins import get_registry

    with pytest.raises(AdaptkitError, match="nan is not a finite number"):
        check_request(get_registry().get("strategy", "slerp"), 2, {"t": float("nan")}, None)


@pytest.mark.parametrize("strategy", ["linear", "svd", "cat", "ties"])
def test_weights_that_overflow(run_cli, box, strategy):
    args = ["combine", "a.safetensors", "b.safetensors", "-w", "1e38,1e38", "-s", strategy]
    _refused(run_cli, box, [*args, "-o", "o.safetensors"], "NaN/Inf")


def test_inspect_json_with_an_infinite_norm(run_cli, box):
    import torch

    big = make_adapter(shapes={Q: (32, 32, 4)}, dtype=torch.float64)
    for pair in big.targets.values():
        pair.A.fill_(1e200)
        pair.B.fill_(1e200)
    save_adapter(big, box / "big.safetensors")
    code, out, err = run_cli("inspect", "big.safetensors", "--json")
    assert code == 0, err
    info = json.loads(out)  # strict JSON: no bare Infinity
    assert info["targets"][0]["delta_norm"] == "inf"


# --- YAML ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["? [a, b]\n: 1", "? {x: 1}\n: 2"])
def test_yaml_collection_as_a_key(run_cli, box, key):
    (box / "r.yaml").write_text(f"adapters: [a.safetensors, b.safetensors]\n{key}\n")
    words = "a mapping key must be a plain value"
    _refused(run_cli, box, ["combine", "r.yaml", "-o", "o.safetensors"], words)


# --- --resume with a crafted state.json ---------------------------------------------------------


@pytest.fixture
def checkpoint(run_cli, box):
    args = [*COMMANDS["train"][:-1], "first.safetensors", "--max-steps", "4", "--save-every", "2"]
    code, _, err = run_cli(*args, "--batch-size", "1", "--eval-records", "0")
    assert code == 0, err
    return box / "first.safetensors.checkpoints" / "step-2"


@pytest.mark.parametrize(
    ("state", "words"),
    [
        ({"step": 10**18}, "at step 1000000000000000000, but this run has 4 steps"),
        ({"step": -5}, "step must be a positive integer, not -5"),
        ({"step": "x"}, "step must be a positive integer, not 'x'"),
        ([1], "must be an object at the top level"),
        (None, "nested deeper"),
    ],
)
def test_crafted_resume_state(run_cli, box, checkpoint, state, words):
    real = json.loads((checkpoint / "state.json").read_text())
    text = DEEP if state is None else json.dumps({**real, **state} if isinstance(state, dict) else state)
    (checkpoint / "state.json").write_text(text)
    args = [*COMMANDS["train"][:-1], "r.safetensors", "--max-steps", "4", "--batch-size", "1"]
    _refused(run_cli, box, [*args, "--resume", checkpoint], words)


# --- costs proportional to legitimate size -------------------------------------------------------


def test_strict_reader_checks_the_header_before_reading_data(box):
    from adaptkit.io.native import load_adapter

    path = box / "a.safetensors"
    with open(path, "r+b") as fh:
        fh.truncate(10 << 30)  # 10 GiB of trailing bytes (sparse) behind a small header
    tracemalloc.start()
    try:
        with pytest.raises(AdaptkitError, match="trailing bytes"):
            load_adapter(path)
        assert tracemalloc.get_traced_memory()[1] < 16 << 20
    finally:
        tracemalloc.stop()


def test_too_many_tensors_is_refused_before_building_them(box):
    from adaptkit.io.native import load_adapter

    header = {f"t{i}": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]} for i in range(140_000)}
    (box / "many.safetensors").write_bytes(raw_safetensors(header, b""))
    with pytest.raises(FormatError, match="140000 tensors, more than the 131072"):
        load_adapter(box / "many.safetensors")


def test_strategy_input_count_is_checked_before_loading(run_cli, box, monkeypatch):
    import adaptkit.io.specs

    loads = []
    real = adaptkit.io.specs.load_ref
    monkeypatch.setattr(adaptkit.io.specs, "load_ref", lambda *a, **k: loads.append(1) or real(*a, **k))
    (box / "r.yaml").write_text(
        "adapters: [" + ", ".join(["a.safetensors"] * 100) + "]\nstrategy: slerp\noutput: o.safetensors\n"
    )
    _refused(run_cli, box, ["combine", "r.yaml"], "takes exactly 2 adapters, got 100")
    assert loads == []


def test_a_recipe_is_parsed_once(run_cli, box, monkeypatch):
    import adaptkit.io.yamlio

    parses = []
    real = adaptkit.io.yamlio.loads_yaml
    monkeypatch.setattr(adaptkit.io.yamlio, "loads_yaml", lambda *a, **k: parses.append(1) or real(*a, **k))
    (box / "r.yaml").write_text("adapters: [a.safetensors, b.safetensors]\noutput: o.safetensors\n")
    code, _, err = run_cli("combine", "r.yaml")
    assert code == 0, err
    assert parses == [1]


def test_error_lines_are_capped(run_cli, box):
    name = "n" * 5_000_000
    header = {name: {"dtype": "F32", "shape": [1], "data_offsets": [0, 8]}}
    (box / "long.safetensors").write_bytes(raw_safetensors(header, b"\0" * 8))
    line = _refused(run_cli, box, ["inspect", "long.safetensors"], "characters cut")
    assert len(line) <= MAX_LINE_CHARS + 100


# --- side files an export copies ----------------------------------------------------------------


def test_exports_copy_no_file_a_symlink_takes_from_outside_the_model(run_cli, box, tmp_path_factory):
    secret = tmp_path_factory.mktemp("elsewhere") / "secret.txt"
    secret.write_text("not part of the model")
    (box / "model" / "notes.txt").symlink_to(secret)
    (box / "model" / "README.md").write_text("a model card")
    _refused(run_cli, box, COMMANDS["export --merged"], "links outside the model folder")
    (box / "model" / "notes.txt").unlink()
    code, _, err = run_cli(*COMMANDS["export --merged"])
    assert code == 0, err
    assert (box / "out" / "README.md").read_text() == "a model card"


def test_hub_cache_snapshots_link_into_their_blobs_and_are_copied(box):
    from adaptkit.io.models import side_files

    repo = box / "models--org--name"
    (repo / "blobs").mkdir(parents=True)
    (repo / "blobs" / "abc").write_text("{}")
    snap = repo / "snapshots" / ("0123456789abcdef" * 3)[:40]  # named by its commit, as the Hub does
    snap.mkdir(parents=True)
    (snap / "config.json").symlink_to(repo / "blobs" / "abc")
    (snap / "leak.txt").symlink_to(box / "data.jsonl")
    assert [p.name for p in side_files(snap)] == ["config.json"]
