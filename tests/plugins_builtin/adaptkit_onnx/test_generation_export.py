"""Generation-ready ONNX (ONNX Runtime GenAI) against the real PEFT library's greedy tokens.

Small random Llama, Mistral, Qwen2 and Phi-3 models (head size 16, no tokenizer) with
PEFT-made adapters. The reference is PEFT's model run by transformers' own ``generate``; the
export runs in ONNX Runtime GenAI through ``adaptkit generate``.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json

import pytest
import torch

from tests.helpers.adapters import peft_adapter
from tests.helpers.models import causal_lm, tiny_gpt2

PROMPTS = ([7, 3, 99, 41], [1, 150, 2, 2, 64, 33, 12, 9, 140])
NEW = 10
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PHI3_LINEAR = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]


def skill(base, folder, seed, targets, r=4):
    """A PEFT adapter with a moderate update: visible in the tokens, not noise-dominated."""
    return peft_adapter(base, folder, seed, targets, r=r, b_scale=0.3)


def peft_tokens(base, adapter_dir, prompt):
    """PEFT's greedy continuation, by transformers' ``generate``."""
    from peft import PeftModel

    model = base if adapter_dir is None else PeftModel.from_pretrained(copy.deepcopy(base), adapter_dir)
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=NEW,
            min_new_tokens=NEW,
            do_sample=False,
            pad_token_id=0,
        )
    return out[0, len(prompt) :].tolist()


def generated(run_cli, folder, prompt, *extra):
    code, out, err = run_cli(
        "generate",
        folder,
        "--input-ids",
        ",".join(map(str, prompt)),
        "--max-new-tokens",
        NEW,
        "--json",
        *extra,
    )
    assert code == 0, err
    return json.loads(out)["output_ids"]


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gen-llama")
    base = causal_lm("llama")
    base.save_pretrained(tmp / "model")
    a = skill(base, tmp / "a", 1, ALL_LINEAR)
    b = skill(base, tmp / "b", 2, ["q_proj", "v_proj", "down_proj"], r=2)
    return tmp, base, a, b


def export_json(run_cli, model, adapter, out, *extra):
    code, stdout, err = run_cli(
        "export", "--onnx", "--model", model, "-a", adapter, "-o", out, "--json", *extra
    )
    assert code == 0, err
    return json.loads(stdout)


@pytest.fixture(scope="module")
def llama_exports(llama):
    """fp32 and int4 exports of the Llama with adapter a, made once for several tests."""
    from adaptkit.cli import main

    tmp, _, adapter, _ = llama
    outs = {}
    for precision in ("fp32", "int4"):
        outs[precision] = tmp / f"onnx-{precision}"
        args = ["export", "--onnx", "--precision", precision, "--model", tmp / "model", "-a", adapter]
        args += ["-o", outs[precision]]
        args += ["--min-agreement", "0.5"] if precision != "fp32" else []  # fp32 is checked on --atol
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            assert main([str(a) for a in args]) == 0  # kept out of the tests' captured output
    return outs


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "phi3"])
def test_fp32_export_generates_peft_greedy_tokens(arch, run_cli, tmp_path, llama, request):
    if arch == "llama":
        _, base, adapter, _ = llama
        out = request.getfixturevalue("llama_exports")["fp32"]
        report = json.loads((out / "export-report.json").read_text())
    else:
        # Mistral's MLP is as wide as the vocabulary: the builder alone would take layer 0's
        # gate_proj for the LM head (every weight right, logits garbage); the handoff names the
        # real head.
        base = causal_lm(arch, **({"intermediate_size": 160} if arch == "mistral" else {}))
        model = tmp_path / "model"
        base.save_pretrained(model)
        adapter = skill(base, tmp_path / "a", 1, PHI3_LINEAR if arch == "phi3" else ALL_LINEAR)
        out = tmp_path / "onnx"
        report = export_json(run_cli, model, adapter, out)
    assert report["graph"] == "generation" and report["precision"] == "fp32"
    assert report["builder"]["peak_rss_mib"] > 0
    assert all(p["tokens_identical"] and p["prefill_max_abs"] < 1e-3 for p in report["parity"])
    genai = json.loads((out / "genai_config.json").read_text())
    assert genai["model"]["eos_token_id"] == []  # no EOS in the config: never stop early
    assert not (out / "tokenizer.json").exists()  # a token-id model: no tokenizer invented
    changed = False
    for prompt in PROMPTS:
        want = peft_tokens(base, adapter, prompt)
        assert generated(run_cli, out, prompt) == want
        changed |= want != peft_tokens(base, None, prompt)
    assert changed, "the adapter must change the greedy tokens, or this test proves nothing"


def test_int4_and_fp16_exports_run_and_report_agreement(run_cli, tmp_path, llama, llama_exports):
    import onnx

    tmp, _, adapter, _ = llama
    fp16 = tmp_path / "fp16"
    export_json(run_cli, tmp / "model", adapter, fp16, "--precision", "fp16")
    for precision, out in (("int4", llama_exports["int4"]), ("fp16", fp16)):
        report = json.loads((out / "export-report.json").read_text())
        assert report["precision"] == precision and len(report["parity"]) == 3
        for row in report["parity"]:
            assert 0.5 <= row["top1_agreement"] <= 1.0 and row["prefill_max_abs"] < 5.0
        graph = onnx.load(str(out / "model.onnx"), load_external_data=False).graph
        ops = {n.op_type for n in graph.node}
        assert "GroupQueryAttention" in ops
        if precision == "int4":
            from adaptkit_onnx.exporter import DEFAULT_INT4

            assert "MatMulNBits" in ops and report["builder"]["int4"] == DEFAULT_INT4
            for node in (n for n in graph.node if n.op_type == "MatMulNBits"):
                attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
                assert {k: attrs[k] for k in DEFAULT_INT4} == DEFAULT_INT4
        else:
            big = max(graph.initializer, key=lambda t: len(t.dims) and t.dims[0] * t.dims[-1])
            assert big.data_type == onnx.TensorProto.FLOAT16
        assert len(generated(run_cli, out, PROMPTS[0])) == NEW


def test_int4_options_are_refused_where_nothing_is_int4(run_cli, llama, tmp_path):
    from tests.helpers.cli import assert_refused

    tmp, _, adapter, _ = llama
    args = ["export", "--onnx", "--model", tmp / "model", "-a", adapter, "-o", tmp_path / "o"]
    assert_refused(run_cli, tmp_path, [*args, "--int4-block-size", "128"], "only int4 weights")
    assert_refused(
        run_cli, tmp_path, [*args, "--precision", "int4", "--int4-block-size", "48"], "--int4-block-size"
    )


def test_a_precision_below_its_floor_is_refused(llama, llama_exports):
    """The floor is enforced: the int4 export checked against a floor of 100% agreement."""
    from transformers import AutoConfig

    from adaptkit.errors import AdaptkitError
    from adaptkit.io.specs import load_spec
    from adaptkit_onnx.parity import verify_generation

    tmp, _, a, _ = llama
    report = json.loads((llama_exports["int4"] / "export-report.json").read_text())
    steps = [r["top1_agreement"] for r in report["parity"]]
    if min(steps) == 1.0:
        pytest.skip("int4 agreed with PyTorch on every probe step")
    config = AutoConfig.from_pretrained(tmp / "model")
    options = {"precision": "int4", "device": "cpu", "atol": 1e-3, "min_agreement": 1.0}
    with pytest.raises(AdaptkitError, match="top-1 agreement"):
        verify_generation(
            tmp / "model", config, {"merged": load_spec(str(a))}, llama_exports["int4"], options, print
        )


@pytest.mark.parametrize("arch", ["llama", "phi3"])
def test_lora_inputs_switch_adapters_in_one_loaded_model(arch, tmp_path, run_cli):
    """One GenAI model, two adapters and none, switched per generator: each gives its own PEFT
    tokens. Phi-3's fused qkv_proj / gate_up_proj are split across the graph's projections."""
    from adaptkit_onnx.runtime.genai import GenaiModel

    base = causal_lm(arch, seed=3)
    base.save_pretrained(tmp_path / "model")
    targets = PHI3_LINEAR if arch == "phi3" else ALL_LINEAR
    a = skill(base, tmp_path / "skill-a", 1, targets)
    b = skill(base, tmp_path / "skill-b", 2, targets[:2], r=2)
    out = tmp_path / "multi"
    code, stdout, err = run_cli(
        "export",
        "--onnx",
        "--lora-inputs",
        "--model",
        tmp_path / "model",
        "-a",
        a,
        "-a",
        b,
        "-o",
        out,
        "--json",
    )
    assert code == 0, err
    report = json.loads(stdout)
    assert {p["variant"] for p in report["parity"]} == {"(none)", "skill-a", "skill-b"}
    manifest = json.loads((out / "adapters.json").read_text())
    runtime = GenaiModel(out)
    for name in ("skill-a", "skill-b"):
        runtime.load_adapter(out / manifest["adapters"][name]["file"], name)
    for prompt in PROMPTS:
        outputs = {}
        for name, folder in (("skill-a", a), ("skill-b", b), (None, None)):
            got, _ = runtime.generate(prompt, NEW, adapter=name)
            assert got == peft_tokens(base, folder, prompt), (name, prompt)
            outputs[name] = got
        assert len({tuple(v) for v in outputs.values()}) > 1  # the adapters do change the tokens
    assert generated(run_cli, out, PROMPTS[0], "--adapter-name", "skill-b") == peft_tokens(
        base, b, PROMPTS[0]
    )


def test_generation_parity_fails_for_a_model_that_is_not_the_reference(llama, llama_exports):
    """The check can fail: an export verified against a different adapter is refused."""
    from transformers import AutoConfig

    from adaptkit.errors import AdaptkitError
    from adaptkit.io.specs import load_spec
    from adaptkit_onnx.parity import verify_generation

    tmp, _, _, b = llama
    config = AutoConfig.from_pretrained(tmp / "model")
    options = {"precision": "fp32", "device": "cpu", "atol": 1e-3, "min_agreement": 1.0}
    with pytest.raises(AdaptkitError, match="differ"):
        verify_generation(
            tmp / "model", config, {"merged": load_spec(str(b))}, llama_exports["fp32"], options, print
        )


def test_graph_choice_is_explicit_for_unsupported_models(run_cli, tmp_path):
    tiny_gpt2().save_pretrained(tmp_path / "gpt2")
    code, _, err = run_cli(
        "export", "--onnx", "--graph", "generation", "--model", tmp_path / "gpt2", "-o", tmp_path / "o"
    )
    assert code == 2 and "does not support GPT2LMHeadModel" in err
    code, _, err = run_cli(
        "export", "--onnx", "--precision", "int4", "--model", tmp_path / "gpt2", "-o", tmp_path / "o"
    )
    assert code == 2 and "int4 needs the generation graph" in err
    assert not (tmp_path / "o").exists()


def test_generate_refuses_bad_requests(run_cli, llama, tmp_path):
    tmp, _, a, _ = llama
    model = tmp / "model"
    cases = [
        (["generate", model, "--input-ids", "1,2", "--prompt", "x"], "exactly one of"),
        (["generate", model], "exactly one of"),
        (["generate", model, "--input-ids", "1,x"], "comma-separated integers"),
        (["generate", model, "--input-ids", "1,500"], "outside the vocabulary"),
        (["generate", model, "--prompt", "hello"], "no tokenizer"),
        (["generate", model, "--input-ids", "1", "--adapter-name", "a"], "--lora-inputs export"),
        (["generate", model, "--input-ids", "1", "--max-new-tokens", "500"], "context of 128"),
        (["generate", tmp_path / "nowhere", "--input-ids", "1"], "nowhere"),
        (
            ["export", "--onnx", "--model", model, "-a", a, "-o", tmp_path / "o", "--base-dtype", "bf16"],
            "logits-only",
        ),
        (
            ["export", "--onnx", "--model", model, "-a", a, "-o", tmp_path / "o", "--dtype", "float16"],
            "--precision",
        ),
    ]
    for args, message in cases:
        code, _out, err = run_cli(*args)
        assert code == 2 and message in err and err.count("\n") == 1, (args, err)


def test_generate_samples_reproducibly_with_a_seed(run_cli, llama, llama_exports):
    """--temperature samples (PyTorch and ONNX Runtime GenAI alike); a seed repeats a run."""
    tmp, _, a, _ = llama
    for target in (["generate", tmp / "model", "-a", a], ["generate", llama_exports["fp32"]]):
        runs = []
        for seed in ("3", "3", "4"):
            args = [*target, "--input-ids", "5,6,7", "--max-new-tokens", str(NEW), "--temperature", "5"]
            code, out, err = run_cli(*args, "--top-p", "0.95", "--seed", seed, "--json")
            assert code == 0, err
            runs.append(json.loads(out)["output_ids"])
        assert runs[0] == runs[1] and len(runs[0]) == NEW
        assert runs[0] != runs[2]  # at temperature 5 over 160 tokens, another seed draws others


def test_builder_peak_is_the_one_the_child_reports(tmp_path):
    """The builder child's peak is its own VmHWM line, not ``RUSAGE_CHILDREN`` (which keeps the
    parent's RSS at fork in the child's ``ru_maxrss``)."""
    from adaptkit_onnx.generation.builder import _reported_peak_mib
    from adaptkit_onnx.generation.builder_worker import PEAK_LINE

    log = tmp_path / "builder.log"
    log.write_text(f"building...\n{PEAK_LINE} 524288\nsaved\n")
    assert _reported_peak_mib(log) == 512.0
    log.write_text("no report here\n")  # no /proc: the fallback still gives a number
    assert _reported_peak_mib(log) is None or _reported_peak_mib(log) > 0
