"""`adaptkit train` keeps the error contract for every input, checks what needs no model before
the model loads, keeps stderr to its own lines and sizes its evaluation to the run.

Mechanisms: adaptkit.training.settings.check_config (flag values), adaptkit.training.options
(backend options against the backend's options_schema), adaptkit.training.loop.plan_run
(every model-free input, before loading), adaptkit.training.resume (a checkpoint against the
run: settings, factors, the whole optimizer state), adaptkit.cli.quiet (third-party output).
"""

import json
import logging
import shutil
import sys
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

from adaptkit.cli import main
from adaptkit.io.native import load_adapter, save_adapter
from tests.helpers.cli import assert_refused
from tests.helpers.models import tiny_llama

RECORDS = 12
TRAIN = ["train", "--model", "model", "--data", "data.jsonl", "--batch-size", "1"]


def _data(n=RECORDS):
    return "".join(json.dumps({"input_ids": [1 + i % 7, 2, 3, 4 + i % 5]}) + "\n" for i in range(n))


def _make_run(root, name, extra):
    args = [*TRAIN, "-o", f"{name}.safetensors", "--max-steps", "4", "--save-every", "2", *extra]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        assert main([*args, "--eval-records", "0", "--json"]) == 0


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A model folder and resume checkpoints (lora, qlora with optimizer=adamw), made once."""
    root = tmp_path_factory.mktemp("made")
    tiny_llama().save_pretrained(root / "model")
    (root / "data.jsonl").write_text(_data())
    _make_run(root, "lora", [])
    _make_run(root, "qlora", ["--backend", "qlora", "--option", "optimizer=adamw"])
    return root


@pytest.fixture
def box(tmp_path, monkeypatch, made):
    shutil.copytree(made / "model", tmp_path / "model")
    (tmp_path / "data.jsonl").write_text(_data())
    for name in ("lora", "qlora"):
        shutil.copytree(made / f"{name}.safetensors.checkpoints" / "step-2", tmp_path / name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def no_model(monkeypatch):
    """Loading the model fails the test: what these inputs get wrong must be found first."""
    import adaptkit.io.models
    import adaptkit.training.loop

    def load(*args, **kwargs):
        raise AssertionError("the model was loaded before the bad input was found")

    monkeypatch.setattr(adaptkit.training.loop, "_load_base", load)
    monkeypatch.setattr(adaptkit.io.models, "load_causal_lm", load)


def _tree(root):
    return sorted(
        (str(p.relative_to(root)), p.stat().st_size) for p in root.rglob("*") if p.is_file() or p.is_dir()
    )


def _refused(run_cli, root, args, words):
    return assert_refused(run_cli, root, args, words, tree=_tree)  # nothing written, nothing trained


# --- 1. an fp16 base with fp16 factors trains (float32 master weights), resumes exactly ---------


@pytest.mark.parametrize("backend", ["lora", "qlora"])
def test_fp16_factors_on_an_fp16_base_train_and_are_written_in_fp16(run_cli, box, backend):
    args = [*TRAIN, "-o", "h.safetensors", "--max-steps", "3", "--base-dtype", "fp16", "--dtype", "fp16"]
    code, _, err = run_cli(*args, "--backend", backend, "--lr", "0.01", "--eval-records", "2")
    assert code == 0, err[-2000:]
    assert "float32 master weights" in err
    adapter = load_adapter(box / "h.safetensors")
    pairs = list(adapter.targets.values())
    assert all(p.A.dtype == p.B.dtype == torch.float16 for p in pairs)
    assert all(torch.isfinite(p.B).all() for p in pairs) and any(p.B.abs().max() > 0 for p in pairs)
    assert adapter.provenance["eval_loss_after"] < adapter.provenance["eval_loss_before"]


def test_fp16_run_resumes_exactly(run_cli, box):
    fp16 = ["--base-dtype", "fp16", "--dtype", "fp16", "--lr", "0.01"]
    _make_run(box, "straight", fp16)
    args = [*TRAIN, "-o", "r.safetensors", "--max-steps", "4", *fp16, "--eval-records", "0"]
    code, _, err = run_cli(*args, "--resume", "straight.safetensors.checkpoints/step-2")
    assert code == 0, err[-2000:]
    resumed, straight = load_adapter(box / "r.safetensors"), load_adapter(box / "straight.safetensors")
    for name, pair in straight.targets.items():
        assert torch.equal(resumed.targets[name].B, pair.B), name


# --- 2. resume: the checkpoint's settings must be this run's -------------------------------------


@pytest.mark.parametrize(
    ("checkpoint", "flags", "words"),
    [
        ("lora", ["--backend", "qlora"], "--backend: the checkpoint was made with --backend 'lora'"),
        ("qlora", ["--backend", "lora"], "--backend: the checkpoint was made with --backend 'qlora'"),
        ("lora", ["--rank", "4"], "--rank: the checkpoint was made with --rank 8, this run has 4"),
        ("lora", ["--alpha", "16"], "--alpha: the checkpoint was made with --alpha 8.0"),
        ("lora", ["--rslora"], "--rslora: the checkpoint was made with --rslora False"),
        ("lora", ["--dtype", "bf16"], "--dtype: the checkpoint was made with --dtype 'fp32'"),
        ("lora", ["--targets", "q_proj,v_proj"], "--targets: the checkpoint was made with --targets"),
        ("lora", ["--exclude", "q_proj"], "--exclude: the checkpoint was made with --exclude []"),
        ("qlora", ["--backend", "qlora"], "--option optimizer='adamw', this run has 'paged_adamw_32bit'"),
        (
            "qlora",
            ["--backend", "qlora", "--option", "optimizer=adamw", "--option", "blocksize=128"],
            "blocksize",
        ),
    ],
)
def test_resume_with_other_settings_is_refused_before_loading(
    run_cli, box, no_model, checkpoint, flags, words
):
    args = [*TRAIN, "-o", "r.safetensors", "--max-steps", "4", "--resume", checkpoint, *flags]
    _refused(run_cli, box, args, words)


# --- 2. resume: a crafted state.json or optimizer.safetensors is refused, never trained on --------


def _group(edit):
    def apply(state, tensors):
        edit(state["param_groups"][0])

    return apply


def _state(edit):
    def apply(state, tensors):
        edit(state)

    return apply


def _tensors(edit):
    def apply(state, tensors):
        edit(tensors)

    return apply


def _split_groups(state):
    group = state["param_groups"][0]
    state["param_groups"] = [
        {**group, "params": group["params"][:14]},
        {**group, "params": group["params"][14:]},
    ]


CRAFTED = {
    # the learning rate of a param group
    "lr negative": (_group(lambda g: g.update(lr=-1.0)), "param_groups[0].lr: must be a learning rate"),
    "lr nan text": (_group(lambda g: g.update(lr="nan")), "param_groups[0].lr: must be a learning rate"),
    "lr text": (_group(lambda g: g.update(lr="0.001")), "param_groups[0].lr: must be a learning rate"),
    "lr list": (_group(lambda g: g.update(lr=[0.001])), "param_groups[0].lr: must be a learning rate"),
    "lr huge": (_group(lambda g: g.update(lr=1e300)), "param_groups[0].lr: must be a learning rate"),
    "lr bool": (_group(lambda g: g.update(lr=True)), "param_groups[0].lr: must be a learning rate"),
    # other hyperparameters: what this run's optimizer uses, nothing else
    "betas > 1": (_group(lambda g: g.update(betas=[1.5, 0.999])), "param_groups[0].betas: is [1.5, 0.999]"),
    "betas short": (_group(lambda g: g.update(betas=[0.9])), "param_groups[0].betas: is [0.9]"),
    "eps zero": (_group(lambda g: g.update(eps=0.0)), "param_groups[0].eps: is 0.0"),
    "eps negative": (_group(lambda g: g.update(eps=-1e-8)), "param_groups[0].eps: is -1e-08"),
    "wd text": (_group(lambda g: g.update(weight_decay="0")), "param_groups[0].weight_decay: is '0'"),
    "wd value": (_group(lambda g: g.update(weight_decay=0.5)), "param_groups[0].weight_decay: is 0.5"),
    "amsgrad text": (_group(lambda g: g.update(amsgrad="yes")), "param_groups[0].amsgrad: is 'yes'"),
    "extra key": (_group(lambda g: g.update(lr_scale=1e308)), "has 'lr_scale', unlike this run's optimizer"),
    "missing key": (_group(lambda g: g.pop("eps")), "lacks 'eps', unlike this run's optimizer"),
    # the groups' count and sizes
    "two groups": (_state(_split_groups), "2 param groups, this run's optimizer has 1"),
    "short group": (_group(lambda g: g.update(params=g["params"][:-1])), "param_groups index 27 parameters"),
    "repeated index": (_group(lambda g: g["params"].__setitem__(1, 0)), "(27 distinct)"),
    "index text": (_group(lambda g: g["params"].__setitem__(0, "0")), "params must be parameter indices"),
    "group not object": (_state(lambda s: s.update(param_groups=[1])), "param_groups[0]: must be an object"),
    # the rest of state.json
    "plain junk": (_state(lambda s: s.update(plain_state={"0": {"foo": 1}})), "plain_state.0.foo"),
    "plain index": (_state(lambda s: s.update(plain_state={"99": {}})), "plain_state.99"),
    "unknown key": (_state(lambda s: s.update(evil=1)), "unexpected key 'evil'"),
    "no config": (_state(lambda s: s.pop("config")), "does not record the settings it was made with"),
    "config lies": (
        _state(lambda s: s["config"]["lora"].update(rank=4)),
        "--rank: the checkpoint was made with --rank 4, this run has 8",
    ),
    "config wd": (
        _state(lambda s: s["config"].update(weight_decay=0.5)),
        "weight_decay: the checkpoint was made",
    ),
    "scaler": (
        _state(lambda s: s.update(grad_scaler={"scale": -1.0})),
        "grad_scaler: must be a loss-scaler state",
    ),
    # optimizer.safetensors: every tensor as this run's optimizer keeps it
    "shape": (
        _tensors(lambda t: t.update({"state.0.exp_avg": torch.zeros(2, 2)})),
        "state.0.exp_avg: is float32 [2, 2]",
    ),
    "dtype": (
        _tensors(lambda t: t.update({"state.0.exp_avg": t["state.0.exp_avg"].double()})),
        "state.0.exp_avg: is float64",
    ),
    "nan": (_tensors(lambda t: t["state.0.exp_avg"].fill_(float("nan"))), "state.0.exp_avg: holds NaN"),
    "negative square": (_tensors(lambda t: t["state.1.exp_avg_sq"].fill_(-1.0)), "second moment"),
    "step huge": (_tensors(lambda t: t["state.2.step"].fill_(1e9)), "state.2.step: must be a step count"),
    "step fraction": (_tensors(lambda t: t["state.2.step"].fill_(1.5)), "state.2.step: must be a step count"),
    "extra tensor": (
        _tensors(lambda t: t.update({"state.0.evil": torch.zeros(1)})),
        "state.0.evil: not kept",
    ),
    "stray tensor": (_tensors(lambda t: t.update({"junk": torch.zeros(1)})), "junk: not an optimizer state"),
    "far index": (
        _tensors(lambda t: t.update({"state.99.x": torch.zeros(1)})),
        "state.99.x: not an optimizer",
    ),
    "missing tensor": (_tensors(lambda t: t.pop("state.3.exp_avg")), "state.3.exp_avg: missing"),
    "rng": (_tensors(lambda t: t.update({"rng.torch": torch.zeros(3, dtype=torch.uint8)})), "rng.torch"),
}


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_crafted_checkpoint_is_refused(run_cli, box, case):
    edit, words = CRAFTED[case]
    state = json.loads((box / "lora" / "state.json").read_text())
    tensors = load_file(box / "lora" / "optimizer.safetensors")
    edit(state, tensors)
    (box / "lora" / "state.json").write_text(json.dumps(state))
    save_file(tensors, box / "lora" / "optimizer.safetensors")
    args = [*TRAIN, "-o", "r.safetensors", "--max-steps", "4", "--resume", "lora"]
    _refused(run_cli, box, args, words)


def test_a_lora_checkpoint_claiming_qlora_is_refused_by_its_optimizer_state(run_cli, box):
    state = json.loads((box / "lora" / "state.json").read_text())
    state["config"]["backend"] = "qlora"
    (box / "lora" / "state.json").write_text(json.dumps(state))
    args = [*TRAIN, "-o", "r.safetensors", "--max-steps", "4", "--resume", "lora", "--backend", "qlora"]
    _refused(run_cli, box, args, "param_groups[0]: lacks 'alpha', unlike this run's optimizer")


def test_checkpoint_factors_of_another_rank_are_refused_before_loading(run_cli, box, no_model):
    adapter = load_adapter(box / "lora" / "adapter.safetensors")
    for pair in adapter.targets.values():
        pair.A, pair.B = pair.A[:4].clone(), pair.B[:, :4].clone()
    save_adapter(adapter, box / "lora" / "adapter.safetensors", overwrite=True)
    args = [*TRAIN, "-o", "r.safetensors", "--max-steps", "4", "--resume", "lora"]
    _refused(run_cli, box, args, "factors have rank 4, this run has --rank 8")


# --- 1. backend options: declared, finite, within range, for every backend ----------------------


@pytest.fixture
def loraplus(monkeypatch):
    """The LoRA+ example backend, registered as if installed."""
    from adaptkit.plugins import registry
    from tests.helpers import REPO

    monkeypatch.syspath_prepend(str(REPO / "examples" / "loraplus_backend"))
    import adaptkit_loraplus

    monkeypatch.setattr(registry, "_cached", registry.load_registry(extra=[("loraplus", adaptkit_loraplus)]))


@pytest.mark.parametrize(
    ("backend", "option", "words"),
    [
        ("loraplus", "ratio=1e308", "loraplus option ratio: must be a number > 0 and <= 1024, got '1e308'"),
        ("loraplus", "ratio=nan", "loraplus option ratio: must be a finite number, got 'nan'"),
        ("loraplus", "ratio=-inf", "loraplus option ratio: must be a finite number"),
        ("loraplus", "ratio=0", "loraplus option ratio: must be a number > 0 and <= 1024, got 0"),
        ("loraplus", "ratio=-2", "loraplus option ratio: must be a number > 0"),
        ("loraplus", "ratio=fast", "loraplus option ratio: must be a number > 0 and <= 1024, got 'fast'"),
        ("loraplus", "ratio=.nan", "non-finite number"),
        ("loraplus", "ration=8", "unknown loraplus option 'ration'; valid: ratio"),
        ("qlora", "blocksize=1e308", "qlora option blocksize: must be an integer >= 64 and <= 4096"),
        ("qlora", "blocksize=nan", "qlora option blocksize: must be"),
        ("qlora", "blocksize=100", "qlora option blocksize: unknown value 100; valid: 64, 128"),
        ("qlora", "optimizer=sgd", "qlora option optimizer: unknown value 'sgd'"),
        ("qlora", "quantize=1", "qlora option quantize: must be text"),
        ("lora", "ratio=16", "unknown lora option 'ratio'; valid: none (lora takes no options)"),
        ("lora", "x", "'x' is not KEY=VALUE"),
    ],
)
def test_bad_backend_option_is_one_line_before_loading(
    run_cli, box, no_model, loraplus, backend, option, words
):
    args = [*TRAIN, "-o", "o.safetensors", "--backend", backend, "--option", option]
    _refused(run_cli, box, args, words)


def test_loraplus_trains_with_a_good_ratio_given_as_text(run_cli, box, loraplus):
    args = [*TRAIN, "-o", "o.safetensors", "--backend", "loraplus", "--option", "ratio=1e1"]
    code, _, err = run_cli(*args, "--max-steps", "2", "--json")
    assert code == 0, err[-2000:]
    assert "lr_B = 10 x lr_A" in err


def test_undeclared_options_still_must_be_finite():
    from adaptkit.errors import AdaptkitError
    from adaptkit.training.options import backend_options

    class Plain:
        name = "plain"

    assert backend_options(Plain(), {"x": "1e3", "y": "fast"}) == {"x": "1e3", "y": "fast"}
    for bad in ("nan", "-Infinity", "1e999", float("inf")):
        with pytest.raises(AdaptkitError, match="plain option x: must be a finite number"):
            backend_options(Plain(), {"x": bad})


def test_a_backend_computing_a_huge_lr_scale_is_refused(run_cli, box, monkeypatch):
    """The backstop for a backend without bounds: the trainer checks every group's lr_scale."""
    from adaptkit_lora import LoraBackend

    def optimizer(self, params, config, log):
        return torch.optim.AdamW([{"params": params, "lr_scale": 1e308}], lr=config.lr)

    monkeypatch.setattr(LoraBackend, "optimizer", optimizer)
    _refused(run_cli, box, [*TRAIN, "-o", "o.safetensors"], "param group 0 an lr_scale of 1e+308")


# --- 2. cheap checks first: nothing that can be checked without the model waits for it ------------


def _write(name, text):
    def make(box):
        (box / name).write_text(text)

    return make


CHEAP = {
    "empty data": (_write("data.jsonl", ""), [], "no training records"),
    "empty data qlora": (_write("data.jsonl", "\n\n"), ["--backend", "qlora"], "no training records"),
    "blank text": (_write("data.txt", " \n"), ["--data", "data.txt"], "data.txt: no training records"),
    "missing data": (None, ["--data", "nope.jsonl"], "nope.jsonl: data file not found"),
    "bad json": (_write("data.jsonl", '{"input_ids": [1, 2]}\n{oops\n'), [], "line 2"),
    "bad shape": (_write("data.jsonl", '{"ids": [1, 2]}\n'), [], "line 1: each line needs exactly one of"),
    "short record": (_write("data.jsonl", '{"input_ids": [1]}\n'), [], "line 1: a record needs at least 2"),
    "ids type": (
        _write("data.jsonl", '{"input_ids": [1, "2"]}\n'),
        [],
        "'input_ids' must be a list of integers",
    ),
    "id too big": (
        _write("data.jsonl", '{"input_ids": [1, 500]}\n'),
        [],
        "token id 500 outside the vocabulary",
    ),
    "negative id": (_write("data.jsonl", '{"input_ids": [1, -1]}\n'), [], "token id -1 is negative"),
    "no tokenizer": (_write("data.jsonl", '{"text": "hi"}\n'), [], "the model directory has no tokenizer"),
    "too long": (None, ["--seq-len", "3"], "record has 4 tokens, more than --seq-len 3"),
    "past the context": (
        _write("data.jsonl", json.dumps({"input_ids": [1] * 65}) + "\n"),
        ["--seq-len", "200"],
        "a training record has 65 tokens, more than the model's context of 64",
    ),
    "eval > data": (
        None,
        ["--eval-records", "99"],
        "--eval-records: 99 records to evaluate, but the data has 12",
    ),
    "lr nan": (None, ["--lr", "nan"], "--lr: must be a finite number > 0"),
    "lr huge": (None, ["--lr", "1e308"], "--lr: must be a finite number > 0 and <= 1"),
    "rank 0": (None, ["--rank", "0"], "--rank: must be an integer from 1"),
    "alpha inf": (None, ["--alpha", "inf"], "--alpha: must be a finite number"),
    "dropout 1": (None, ["--dropout", "1"], "--dropout: must be a number in [0, 1)"),
    "batch 0": (None, ["--batch-size", "0"], "--batch-size: must be an integer from 1"),
    "steps 0": (None, ["--max-steps", "0"], "--max-steps: must be an integer from 1"),
    "seed huge": (None, ["--seed", str(2**70)], "--seed: must be an integer from 0"),
    "option": (None, ["--backend", "qlora", "--option", "blocksize=3"], "qlora option blocksize"),
    "output is data": (None, ["-o", "data.jsonl", "--force"], "data.jsonl"),
    "metrics exists": (_write("m.jsonl", "{}\n"), ["--metrics", "m.jsonl"], "--metrics: output exists"),
    "resume rank": (
        None,
        ["--resume", "lora", "--rank", "4"],
        "--rank: the checkpoint was made with --rank 8",
    ),
    "resume done": (None, ["--resume", "lora", "--max-steps", "2"], "at step 2, but this run has 2 steps"),
    "resume missing": (None, ["--resume", "nowhere"], "not a checkpoint folder"),
}


@pytest.mark.parametrize("case", sorted(CHEAP))
def test_inputs_are_checked_before_the_model_loads(run_cli, box, no_model, case):
    make, flags, words = CHEAP[case]
    if make:
        make(box)
    _refused(run_cli, box, [*TRAIN, "-o", "o.safetensors", *flags], words)


# --- 3. clean stderr: other libraries' messages only with --verbose -------------------------------


@pytest.fixture
def plain_process(monkeypatch):
    """What a plain `python -m adaptkit` process has, which pytest replaces: a root logger with
    no handler (so Python's last-resort handler prints warnings to stderr) and Python's own
    warning printer."""
    monkeypatch.setattr(logging.getLogger(), "handlers", [])

    def show(message, category, filename, lineno, file=None, line=None):
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

    monkeypatch.setattr(warnings, "showwarning", show)


@pytest.mark.parametrize("verbose", [False, True])
def test_third_party_output_stays_off_stderr_unless_verbose(
    run_cli, box, monkeypatch, plain_process, verbose
):
    from transformers.utils import logging as hf_logging

    import adaptkit.training.loop

    load = adaptkit.training.loop._load_base
    own = logging.getLogger("somelib")  # a library with its own stderr handler, as transformers has
    monkeypatch.setattr(own, "handlers", [logging.StreamHandler(sys.stderr)])
    monkeypatch.setattr(own, "propagate", False)

    def noisy(*args, **kwargs):
        logging.getLogger("bitsandbytes.backends.cpu.ops").warning(
            "Failed to load CPU gemm_4bit_forward (test)"
        )
        hf_logging.get_logger("transformers.modeling_utils").warning("transformers-noise-41")
        own.warning("somelib-noise-42")
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn("torch-noise-43", UserWarning, stacklevel=1)
        return load(*args, **kwargs)

    monkeypatch.setattr(adaptkit.training.loop, "_load_base", noisy)
    args = [*(["--verbose"] if verbose else []), *TRAIN, "-o", "o.safetensors", "--max-steps", "1"]
    code, out, err = run_cli(*args)
    assert code == 0, err[-2000:]
    assert out.startswith("wrote o.safetensors")
    assert "base: float32" in err  # adaptkit's own lines stay
    for noise in ("gemm_4bit_forward", "transformers-noise-41", "somelib-noise-42", "torch-noise-43"):
        assert (noise in err) == verbose, (noise, err)
    if verbose:
        assert "[bitsandbytes.backends.cpu.ops] WARNING: Failed to load CPU gemm_4bit_forward" in err
    # routing ends with the command
    assert logging.Logger.callHandlers.__name__ == "callHandlers"


# --- 4. the evaluation is sized to the run and shows its progress -------------------------------


def test_eval_size_rule():
    from adaptkit.training.loop import eval_size

    assert eval_size(None, 1000, 8) == 1  # 2 steps x 4: one record, not 64
    assert eval_size(None, 1000, 400) == 50
    assert eval_size(None, 1000, 100_000) == 64
    assert eval_size(None, 3, 100_000) == 3
    assert eval_size(0, 1000, 8) == 0 and eval_size(20, 1000, 8) == 20


@pytest.mark.parametrize(
    ("flags", "sizes"), [([], [1, 1]), (["--eval-records", "5"], [5, 5]), (["--eval-records", "0"], [])]
)
def test_default_evaluation_is_sized_to_the_run(run_cli, box, monkeypatch, flags, sizes):
    import adaptkit.training.loop

    evaluate, seen, labels = adaptkit.training.loop.evaluate_loss, [], []

    def counting(model, records, *args, **kwargs):
        seen.append(len(records))
        labels.append(kwargs.get("progress"))
        return evaluate(model, records, *args, **kwargs)

    monkeypatch.setattr(adaptkit.training.loop, "evaluate_loss", counting)
    code, _, err = run_cli(*TRAIN, "-o", "o.safetensors", "--max-steps", "2", *flags)
    assert code == 0, err[-2000:]
    assert seen == sizes
    assert labels == ["eval before", "eval after"][: len(sizes)]


def test_help_states_the_evaluation_rule(run_cli):
    code, out, _ = run_cli("train", "--help")
    assert code == 0 and "an eighth of the records it trains on" in " ".join(out.split())
