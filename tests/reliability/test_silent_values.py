"""No value is silently accepted or ignored: over-length `combine --tune` records, export
options a path does not use (and out-of-range `--opset`), two outputs of one command on one
path, weights on adapters that save modules whole, zero-size factors.

Every refusal here happens before a model loads: the loaders are replaced by ones that fail
the test, so these stay fast and prove the order too."""

import json
from pathlib import Path

import pytest
import torch

from adaptkit import Adapter, LoraPair, SavedModule, save_adapter
from adaptkit.errors import InvalidAdapterError
from tests.helpers.adapters import make_adapter
from tests.helpers.models import tiny_llama


def _one_error(code, err, *words):
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(errors) == 1 and err.count("\n") == 1, err
    assert all(w in errors[0] for w in words), err
    return errors[0]


def _forbid(monkeypatch, *targets):
    """Make each ``module:attribute`` fail the test if it is called, wherever it is reachable.

    The public API re-exports these functions (``adaptkit.api.models.load_causal_lm``), so the
    API modules are imported first, holding the real function, and every loaded module that
    holds it gets the stand-in too; monkeypatch restores them all. Patching only the home
    module would let a module first imported during the test keep the stand-in for good.
    """
    import importlib
    import sys

    importlib.import_module("adaptkit.api.models")
    importlib.import_module("adaptkit.api.nn")
    for target in targets:
        module, _, attr = target.partition(":")
        original = getattr(importlib.import_module(module), attr)

        def called(*_a, _what=target, **_k):
            raise AssertionError(f"{_what} ran before the refusal")

        for holder in list(sys.modules.values()):
            if getattr(holder, attr, None) is original:
                monkeypatch.setattr(holder, attr, called)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two tiny Llamas: head size 8 (the logits-only graph) and 16 (the generation graph)."""
    root = tmp_path_factory.mktemp("silent-models")
    tiny_llama().save_pretrained(root / "logits")
    tiny_llama(hidden_size=64, intermediate_size=64).save_pretrained(root / "generation")
    return root


@pytest.fixture
def no_model_loads(monkeypatch):
    _forbid(
        monkeypatch,
        "adaptkit.io.models:load_causal_lm",
        "adaptkit.combine.tune:load_base",
        "adaptkit.nn.checkpoint:bake_checkpoint",
        "adaptkit_onnx.generation.builder:run_builder",
    )


def _llama_adapter(hidden=32, seed=0, saved=None):
    g = torch.Generator().manual_seed(seed)
    pair = LoraPair(torch.randn(2, hidden, generator=g), torch.randn(hidden, 2, generator=g), alpha=4.0)
    return Adapter(targets={"model.layers.0.self_attn.q_proj": pair}, saved=saved or {})


# --- 1. combine --tune: records longer than the model's context ---------------------------------


def _jsonl(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_tune_refuses_a_record_longer_than_the_context_by_line_before_loading(
    models, tmp_path, run_cli, no_model_loads
):
    a = save_adapter(_llama_adapter(), tmp_path / "a.safetensors")
    short = json.dumps({"input_ids": list(range(3, 13))})
    long = json.dumps({"input_ids": [5] * 65})  # the tiny Llama's context is 64
    data = _jsonl(tmp_path / "eval.jsonl", [short, "", short, long, short])
    code, _, err = run_cli(
        "combine", a, "--tune", data, "--model", models / "logits", "-o", tmp_path / "t.safetensors"
    )
    line = _one_error(code, err, "eval.jsonl: line 4:", "65 tokens", "context of 64")
    assert "--seq-len" not in line and "--truncate" not in line and "combine --tune" in line
    assert not (tmp_path / "t.safetensors").exists()


def test_tune_accepts_a_record_exactly_the_context_long(tmp_path):
    from adaptkit.combine.tune import _refuse_over_context

    _refuse_over_context(tmp_path / "unread.jsonl", [[1] * 64, [2] * 3], 64)  # no error, no read


def test_model_limits_come_from_config_json_of_any_family(tmp_path):
    from adaptkit.combine.tune import model_limits

    for config, want in (
        ({"vocab_size": 50, "max_position_embeddings": 32}, (50, 32)),
        ({"vocab_size": 50, "n_positions": 1024}, (50, 1024)),
        ({"text_config": {"vocab_size": 7, "max_position_embeddings": 9}}, (7, 9)),
        ({"vocab_size": "50", "max_position_embeddings": True}, (None, None)),
    ):
        (tmp_path / "config.json").write_text(json.dumps(config))
        assert model_limits(tmp_path) == want


# --- 2. export: options a path does not use, --opset out of range -------------------------------

EXPORT_CASES = [
    # (model, extra flags, words in the error)
    # The schema's bounds (checked by the host), then what the installed onnx knows.
    ("logits", ["--graph", "logits", "--opset", "-3"], ["--opset: must be an integer >= 18", "'-3'"]),
    ("logits", ["--opset", "0"], ["--opset: must be an integer >= 18", "'0'"]),
    ("logits", ["--opset", "17"], ["--opset: must be an integer >= 18", "'17'"]),
    ("logits", ["--opset", "10000"], ["--opset: must be an integer", "<= 40", "'10000'"]),
    ("logits", ["--opset", "39"], ["--opset 39 is out of range", "the newest the installed onnx"]),
    ("logits", ["--opset", "18.5"], ["--opset: must be an integer", "'18.5'"]),
    (
        "generation",
        ["--graph", "generation", "--opset", "18"],
        ["--opset does nothing for the generation graph"],
    ),
    ("generation", ["--external-data", "always"], ["--external-data does nothing for the generation graph"]),
    # An option of another exporter: refused by the host, naming the exporter that takes it.
    ("generation", ["--merge-base", "dequantized"], ["--merge-base is an option of --merged, not of --onnx"]),
    (
        "generation",
        ["--lora-inputs", "--merge-base", "dequantized"],
        ["--merge-base is an option of --merged, not of --onnx"],
    ),
    ("generation", ["--min-agreement", "0.5"], ["--min-agreement does nothing", "fp32"]),
    ("generation", ["--precision", "int4", "--atol", "0.1"], ["--atol does nothing", "int4"]),
    ("generation", ["--no-verify", "--atol", "0.1"], ["--atol does nothing", "--no-verify"]),
    (
        "generation",
        ["--no-verify", "--precision", "fp16", "--min-agreement", "0.1"],
        ["--min-agreement does"],
    ),
    (
        "logits",
        ["--lora-inputs", "--device", "cuda"],
        ["--device does nothing for the logits-only graph (the generation graph is unavailable"],
    ),
    ("logits", ["--device", "cuda"], ["--device does nothing for the logits-only graph"]),
    ("logits", ["--graph", "logits", "--min-agreement", "0.5"], ["--min-agreement does nothing"]),
    ("logits", ["--dtype", "float16", "--precision", "fp32"], ["--precision does nothing", "not both"]),
    ("logits", ["--no-verify", "--atol", "0.1"], ["--atol does nothing", "--no-verify"]),
]
MERGED_CASES = [
    ["--opset", "18"],
    ["--dtype", "float16"],
    ["--atol", "0.1"],
    ["--no-verify"],
    ["--external-data", "never"],
]


@pytest.mark.parametrize(
    ("model", "extra", "words"), EXPORT_CASES, ids=[f"{m} {' '.join(x)}" for m, x, _ in EXPORT_CASES]
)
def test_export_refuses_options_its_path_ignores(
    models, tmp_path, run_cli, no_model_loads, model, extra, words
):
    hidden = 64 if model == "generation" else 32
    a = save_adapter(_llama_adapter(hidden), tmp_path / "a.safetensors")
    out = tmp_path / "out"
    code, _, err = run_cli("export", "--onnx", "--model", models / model, "-a", a, "-o", out, *extra)
    _one_error(code, err, *words)
    assert not out.exists()


@pytest.mark.parametrize("extra", MERGED_CASES, ids=" ".join)
def test_merged_export_refuses_onnx_and_parity_options(models, tmp_path, run_cli, no_model_loads, extra):
    a = save_adapter(_llama_adapter(), tmp_path / "a.safetensors")
    out = tmp_path / "out"
    code, _, err = run_cli("export", "--merged", "--model", models / "logits", "-a", a, "-o", out, *extra)
    _one_error(code, err, f"{extra[0]} is an option of --onnx, not of --merged")
    assert not out.exists()


def test_every_export_flag_is_the_host_s_or_an_exporter_s_declared_option():
    """The flags of `adaptkit export` are exactly the host's, one per exporter, and the options the
    exporters declare: an option cannot reach an exporter without its schema checking it."""
    import click

    from adaptkit.cli import cli
    from adaptkit.exporting import HOST_FLAGS, option_flag
    from adaptkit.plugins import get_registry

    command = cli.commands["export"]
    root = click.Context(cli, info_name="adaptkit", **cli.context_settings)
    ctx = click.Context(command, info_name="export", parent=root)
    flags = {opt for p in command.get_params(ctx) for opt in p.opts}
    exporters = get_registry().all("exporter")
    declared = {
        option_flag(key, spec)
        for reg in exporters
        for key, spec in reg.obj.options_schema["properties"].items()
    }
    assert {"--merged", "--onnx"} <= {"--" + r.name for r in exporters}
    assert flags == HOST_FLAGS | declared | {"--" + r.name for r in exporters}
    assert {"--no-verify", "--lora-inputs", "--merge-base", "--precision", "--opset"} <= declared


def test_the_export_command_names_no_exporter_or_exporter_option():
    """Core's `export` is a host: every exporter name and option comes from the registry."""
    import re

    from adaptkit.cli import export_cmd
    from adaptkit.exporting import option_flag
    from adaptkit.plugins import get_registry

    words = set(re.findall(r"--[a-z][a-z0-9-]*", Path(export_cmd.__file__).read_text()))
    for reg in get_registry().all("exporter"):
        flags = {"--" + reg.name} | {
            option_flag(k, s) for k, s in reg.obj.options_schema["properties"].items()
        }
        assert not words & flags, f"cli/export_cmd.py names {sorted(words & flags)} of {reg.name}"


# --- 3. two outputs of one command --------------------------------------------------------------


@pytest.fixture
def box(tmp_path, monkeypatch):
    save_adapter(make_adapter(0), tmp_path / "a.safetensors")
    save_adapter(make_adapter(1), tmp_path / "b.safetensors")
    _jsonl(tmp_path / "data.jsonl", ['{"input_ids": [1, 2, 3]}'] * 4)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    (tmp_path / "existing.safetensors").write_bytes(b"an earlier output")
    (tmp_path / "alias").symlink_to(tmp_path)
    (tmp_path / "peft").mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _snapshot(root):
    """Every path under ``root`` and the bytes of its files (symlinks listed, not followed)."""
    import os

    seen = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(folder, name)
            seen[str(p.relative_to(root))] = p.read_bytes() if p.is_file() and not p.is_symlink() else None
    return seen


TUNE = ["combine", "a.safetensors", "b.safetensors", "--tune", "data.jsonl", "--model", "model", "--force"]
TRAIN = ["train", "--model", "model", "--data", "data.jsonl", "--force"]
OUTPUT_CASES = [
    ([*TUNE, "-o", "new.safetensors", "--plot", "new.safetensors"], "is the same path as -o"),
    ([*TUNE, "-o", "existing.safetensors", "--plot", "existing.safetensors"], "is the same path as -o"),
    ([*TUNE, "-o", "new.safetensors", "--plot", "alias/new.safetensors"], "is the same path as -o"),
    ([*TUNE, "--to", "peft", "-o", "peft", "--plot", "peft/alpha.png"], "lies inside the output of -o"),
    ([*TRAIN, "-o", "new.safetensors", "--metrics", "new.safetensors"], "--metrics output is the same path"),
    ([*TRAIN, "-o", "m/x.safetensors", "--metrics", "m"], "contains the output of -o"),
    (
        [
            *TRAIN,
            "-o",
            "n.safetensors",
            "--metrics",
            "n.safetensors.checkpoints/step-2/m.jsonl",
            "--save-every",
            "2",
        ],
        "--save-every output contains the output of --metrics",
    ),
]


@pytest.mark.parametrize(("args", "words"), OUTPUT_CASES, ids=[" ".join(a[-4:]) for a, _ in OUTPUT_CASES])
def test_two_outputs_of_one_command_are_refused_even_with_force(run_cli, box, no_model_loads, args, words):
    before = _snapshot(box)
    code, _, err = run_cli(*args)
    _one_error(code, err, words, "even with --force")
    assert _snapshot(box) == before


def test_the_guard_compares_outputs_by_inode_too(tmp_path):
    from adaptkit.errors import OutputError
    from adaptkit.io.output_guard import PLOT, check_output, check_outputs_apart

    (tmp_path / "x.png").write_bytes(b"png")
    (tmp_path / "y.png").hardlink_to(tmp_path / "x.png")
    with pytest.raises(OutputError, match="same path"):
        check_outputs_apart({"-o": tmp_path / "x.png", "--plot": tmp_path / "y.png"})
    with pytest.raises(OutputError, match="same path"):
        check_output(tmp_path / "y.png", PLOT, force=True, flag="--plot", siblings={"-o": tmp_path / "x.png"})
    check_outputs_apart({"-o": tmp_path / "a.safetensors", "--plot": tmp_path / "a.png", "--x": None})


# --- 4. weights on adapters that save modules whole ---------------------------------------------


def _with_head(hidden=32, seed=0):
    head = SavedModule({"weight": torch.full((128, hidden), 0.5)})
    return _llama_adapter(hidden, seed, saved={"lm_head": head})


@pytest.fixture
def heads(tmp_path, monkeypatch):
    save_adapter(_with_head(), tmp_path / "h.safetensors")
    save_adapter(_llama_adapter(seed=1), tmp_path / "p.safetensors")
    monkeypatch.chdir(tmp_path)
    return tmp_path


SAVED_CASES = [
    (
        ["combine", "h.safetensors", "p.safetensors", "-w", "-1,1"],
        ["weight -1", "cannot be negated or scaled"],
    ),
    (["combine", "h.safetensors", "p.safetensors", "-w", "0.5,1"], ["weight 0.5"]),
    (["combine", "h.safetensors", "p.safetensors", "-s", "slerp"], ["strategy 'slerp'", "cannot be blended"]),
    (["combine", "recipe.yaml"], ["weight -2"]),
    (["combine", "neg.yaml", "p.safetensors"], ["weight -1"]),
]


@pytest.mark.parametrize(("args", "words"), SAVED_CASES, ids=[" ".join(a[1:]) for a, _ in SAVED_CASES])
def test_a_saved_module_is_never_weighted_or_blended(run_cli, heads, args, words):
    (heads / "recipe.yaml").write_text(
        "adapters:\n  - {adapter: h.safetensors, weight: -2}\n  - p.safetensors\noutput: r.safetensors\n"
    )
    (heads / "neg.yaml").write_text("adapter: h.safetensors\nweight: -1\nname: h\n")
    before = _snapshot(heads)
    code, _, err = run_cli(*args, "-o", "out.safetensors")
    _one_error(code, err, "saves lm_head whole", *words)
    assert _snapshot(heads) == before


def test_saved_modules_still_pass_at_weight_one_and_drop_at_zero(run_cli, heads):
    code, _, err = run_cli(
        "combine", "h.safetensors", "p.safetensors", "-w", "1,-0.5", "-o", "one.safetensors"
    )
    assert code == 0, err
    code, _, err = run_cli(
        "combine", "h.safetensors", "p.safetensors", "-w", "0,-0.5", "-o", "zero.safetensors"
    )
    assert code == 0, err
    from adaptkit import load_adapter

    assert set(load_adapter(heads / "one.safetensors").saved) == {"lm_head"}
    assert load_adapter(heads / "zero.safetensors").saved == {}


@pytest.mark.parametrize("how", ["--merged", "--onnx"])
def test_export_refuses_a_weighted_saved_module_before_loading(models, run_cli, heads, no_model_loads, how):
    (heads / "neg.yaml").write_text("adapter: h.safetensors\nweight: -1\nname: h\n")
    code, _, err = run_cli("export", how, "--model", models / "logits", "-a", "neg.yaml", "-o", "out")
    _one_error(code, err, "saves lm_head whole", "weight -1")
    assert not (heads / "out").exists()


def test_tuning_applies_the_saved_modules_it_will_write(models, tmp_path, monkeypatch):
    """The tuned loss is measured with the saved head in place, as the output will run."""
    from adaptkit.combine import tune
    from adaptkit.combine.job import combine_specs

    a = save_adapter(_with_head(), tmp_path / "h.safetensors")
    data = _jsonl(
        tmp_path / "d.jsonl", [json.dumps({"input_ids": list(range(3 + i, 13 + i))}) for i in range(4)]
    )
    heads_seen = []
    real = tune.tune_weights

    def spy(model, *args, **kwargs):
        heads_seen.append(model.lm_head.weight.detach().clone())
        return real(model, *args, **kwargs)

    monkeypatch.setattr(tune, "tune_weights", spy)
    combine_specs(
        [str(a)],
        output=tmp_path / "t.safetensors",
        tune={"sets": [str(data)], "model": str(models / "logits"), "steps": 1},
        progress=False,
    )
    assert torch.equal(heads_seen[0], torch.full((128, 32), 0.5))


# --- 5. zero-size factors -----------------------------------------------------------------------

ZERO_SHAPES = {
    "in_features 0": ((2, 0), (8, 2), "lora_A.weight: zero-size tensor (shape [2, 0])"),
    "out_features 0": ((2, 16), (0, 2), "lora_B.weight: zero-size tensor (shape [0, 2])"),
    "rank 0": ((0, 16), (8, 0), "lora_A.weight: zero-size tensor (shape [0, 16])"),
}


def _native_with(tmp_path, a_shape, b_shape):
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = save_adapter(_llama_adapter(16), tmp_path / "z.safetensors")
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
    key = "model.layers.0.self_attn.q_proj"
    save_file(
        {f"{key}.lora_A.weight": torch.zeros(a_shape), f"{key}.lora_B.weight": torch.zeros(b_shape)},
        path,
        meta,
    )
    return path


def _peft_with(tmp_path, a_shape, b_shape):
    from safetensors.torch import load_file, save_file

    path = tmp_path / "peft"
    path.mkdir()
    (path / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"]})
    )
    key = "base_model.model.model.layers.0.self_attn.q_proj"
    tensors = {f"{key}.lora_A.weight": torch.zeros(a_shape), f"{key}.lora_B.weight": torch.zeros(b_shape)}
    save_file(tensors, path / "adapter_model.safetensors")
    assert load_file(path / "adapter_model.safetensors")  # a well-formed file, only empty
    return path


@pytest.mark.parametrize("fmt", ["native", "peft"])
@pytest.mark.parametrize("case", sorted(ZERO_SHAPES))
def test_zero_size_factors_are_refused_by_the_reader(tmp_path, run_cli, fmt, case):
    a_shape, b_shape, words = ZERO_SHAPES[case]
    path = (_native_with if fmt == "native" else _peft_with)(tmp_path, a_shape, b_shape)
    weights = path if fmt == "native" else path / "adapter_model.safetensors"
    for args in (
        ["inspect", path],
        ["inspect", path, "--json"],
        ["convert", path, "--to", "adaptkit", "-o", tmp_path / "c.safetensors"],
    ):
        code, _, err = run_cli(*args)
        _one_error(code, err, str(weights), words)
    assert not (tmp_path / "c.safetensors").exists()


@pytest.mark.parametrize("case", sorted(ZERO_SHAPES))
def test_zero_size_factors_are_refused_in_memory_too(case):
    a_shape, b_shape, _ = ZERO_SHAPES[case]
    with pytest.raises(InvalidAdapterError, match="must be >= 1"):
        LoraPair(torch.zeros(a_shape), torch.zeros(b_shape), alpha=1.0)
    empty_head = {"lm_head": SavedModule({"weight": torch.zeros(0, 16)})}
    assert any("zero-size" in p for p in _llama_adapter(16, saved=empty_head).problems())
