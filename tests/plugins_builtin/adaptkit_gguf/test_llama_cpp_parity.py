"""Adapter GGUFs run in llama.cpp itself (llama-cpp-python) against the real PEFT library.

Small random Llama, Mistral, Qwen2, Qwen3, Phi-3, Gemma and Gemma 3 models with PEFT-made adapters on
every linear projection. The base GGUF is written by ``tests/helpers/gguf_base.py`` (why not
llama.cpp's converter: see there). The reference is PEFT's model with the adapter unmerged, run
by transformers: its greedy tokens must be llama.cpp's, and its logits llama.cpp's within
float32 noise (Gemma: ggml evaluates GELU from a half-precision table, about 1e-3).
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from tests.helpers.adapters import peft_adapter
from tests.helpers.gguf_base import write_base_gguf
from tests.helpers.models import causal_lm

pytest.importorskip("gguf", reason="the gguf extra is part of the test extra: pip install -e '.[test]'")
llama_cpp = pytest.importorskip("llama_cpp", reason="the test extra installs llama-cpp-python")

PROMPTS = ([7, 3, 99, 41], [1, 150, 2, 2, 64, 33, 12, 9, 140])
NEW = 10
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PHI3_LINEAR = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
#: A byte vocabulary (3 specials + 256 bytes) and a few pieces; larger init: decisive argmaxes.
SIZE = dict(vocab_size=288, initializer_range=0.1)
#: Logit tolerance per architecture (absolute; logits are O(5)).
ATOL = {"gemma": 5e-3, "gemma3_text": 5e-3}


def session(base_gguf, adapters=(), **kw):
    from adaptkit_gguf.runtime import LlamaCppSession

    return LlamaCppSession(base_gguf, adapters, n_ctx=64, threads=1, logits_all=True, **kw)


def peft_model(base, adapter_dir):
    from peft import PeftModel

    return base if adapter_dir is None else PeftModel.from_pretrained(copy.deepcopy(base), adapter_dir)


def reference(model, prompt):
    """(greedy tokens by transformers' generate, prompt logits) of a PyTorch model."""
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
        logits = model(ids).logits[0].numpy()
    return out[0, len(prompt) :].tolist(), logits


def export(run_cli, model_dir, out, *specs, extra=()):
    args = ["export", "--gguf", "--model", model_dir, "-o", out, "--json", *extra]
    for spec in specs:
        args += ["-a", spec]
    code, stdout, err = run_cli(*args)
    assert code == 0, err
    return json.loads(stdout)


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "qwen3", "phi3", "gemma", "gemma3_text"])
def test_greedy_tokens_equal_peft_in_llama_cpp(arch, run_cli, tmp_path):
    base = causal_lm(arch, **SIZE)
    base.save_pretrained(tmp_path / "model")
    targets = PHI3_LINEAR if arch == "phi3" else ALL_LINEAR
    # Gemma scales its embeddings by √hidden: a stronger update to move its argmaxes.
    b_scale = 1.0 if arch.startswith("gemma") else 0.3
    adapter = peft_adapter(base, tmp_path / "a", 1, targets, r=4, b_scale=b_scale)
    report = export(run_cli, tmp_path / "model", tmp_path / "out", adapter)
    assert report["targets"] == 2 * len(targets)
    base_gguf = write_base_gguf(tmp_path / "model", tmp_path / "base.gguf")
    atol = ATOL.get(arch, 1e-4)
    changed = False
    with session(base_gguf) as plain, session(base_gguf, [(tmp_path / "out" / "adapter.gguf", 1.0)]) as tuned:
        for prompt in PROMPTS:
            # The base alone first: a layout error in the base shows here, not as an adapter bug.
            want0, logits0 = reference(base, prompt)
            assert plain.greedy(prompt, NEW) == want0
            np.testing.assert_allclose(plain.logits(prompt), logits0, atol=atol, rtol=0)
            want, logits = reference(peft_model(base, adapter), prompt)
            assert tuned.greedy(prompt, NEW) == want, prompt
            np.testing.assert_allclose(tuned.logits(prompt), logits, atol=atol, rtol=0)
            changed |= want != want0
    assert changed, "the adapter must change the greedy tokens, or this test proves nothing"


def test_per_module_ranks_alphas_and_rslora_are_exact(run_cli, tmp_path):
    """rank_pattern/alpha_pattern and rsLoRA give every target its own scale; llama.cpp has one
    alpha per file and divides by each pair's rank, so the exporter folds the rest into B."""
    base = causal_lm("llama", **SIZE)
    base.save_pretrained(tmp_path / "model")
    adapter = peft_adapter(
        base,
        tmp_path / "a",
        2,
        ALL_LINEAR,
        r=4,
        alpha=8,
        b_scale=0.3,
        use_rslora=True,
        rank_pattern={"k_proj": 2, "down_proj": 6},
        alpha_pattern={"v_proj": 3, "up_proj": 20},
    )
    report = export(run_cli, tmp_path / "model", tmp_path / "out", adapter)
    assert report["scales_folded"] > 0 and report["alpha"] == pytest.approx(8 * 4**0.5)
    base_gguf = write_base_gguf(tmp_path / "model", tmp_path / "base.gguf")
    with session(base_gguf, [(tmp_path / "out" / "adapter.gguf", 1.0)]) as tuned:
        for prompt in PROMPTS:
            want, logits = reference(peft_model(base, adapter), prompt)
            _, logits0 = reference(base, prompt)
            assert np.abs(logits - logits0).max() > 0.5  # the adapter matters
            np.testing.assert_allclose(tuned.logits(prompt), logits, atol=1e-4, rtol=0)
            assert tuned.greedy(prompt, NEW) == want


def test_llama_cpp_scales_equal_combine_weights(run_cli, tmp_path):
    """--lora-inputs: two adapter files loaded together at scales 0.7 and -0.4 give the logits
    of ``combine -w 0.7,-0.4`` (exported as one file) and of PEFT's exact ``cat`` combination."""
    from peft import PeftModel

    base = causal_lm("llama", seed=3, **SIZE)
    base.save_pretrained(tmp_path / "model")
    a = peft_adapter(base, tmp_path / "a", 1, ALL_LINEAR, r=4, b_scale=0.3)
    b = peft_adapter(base, tmp_path / "b", 2, ["q_proj", "v_proj", "down_proj"], r=2, alpha=3, b_scale=0.3)
    code, _, err = run_cli("combine", a, b, "-w", "0.7,-0.4", "-s", "cat", "-o", tmp_path / "ab.safetensors")
    assert code == 0, err
    export(run_cli, tmp_path / "model", tmp_path / "combined", tmp_path / "ab.safetensors")
    report = export(run_cli, tmp_path / "model", tmp_path / "each", a, b, extra=["--lora-inputs"])
    manifest = json.loads((tmp_path / "each" / "adapters.json").read_text())
    assert [e["scale"] for e in manifest["adapters"].values()] == [1.0, 1.0]  # -a without weights
    assert len(report["files"]) == 2

    peft = PeftModel.from_pretrained(copy.deepcopy(base), a, adapter_name="a")
    peft.load_adapter(b, adapter_name="b")
    peft.add_weighted_adapter(["a", "b"], [0.7, -0.4], "ab", combination_type="cat")
    peft.set_adapter("ab")
    files = [tmp_path / "each" / e["file"] for e in manifest["adapters"].values()]
    base_gguf = write_base_gguf(tmp_path / "model", tmp_path / "base.gguf")
    with (
        session(base_gguf, list(zip(files, (0.7, -0.4), strict=True))) as scaled,
        session(base_gguf, [(tmp_path / "combined" / "adapter.gguf", 1.0)]) as one,
    ):
        for prompt in PROMPTS:
            want, logits = reference(peft, prompt)
            np.testing.assert_allclose(scaled.logits(prompt), logits, atol=1e-4, rtol=0)
            np.testing.assert_allclose(one.logits(prompt), logits, atol=1e-4, rtol=0)
            assert scaled.greedy(prompt, NEW) == want == one.greedy(prompt, NEW)


def test_llama_cpp_refusal_is_one_error_naming_the_file(run_cli, tmp_path):
    """A Llama adapter on a Qwen2 base: llama.cpp's own reason, in an AdaptkitError."""
    from adaptkit.api import AdaptkitError

    llama = causal_lm("llama", **SIZE)
    llama.save_pretrained(tmp_path / "llama")
    qwen = causal_lm("qwen2", **SIZE)
    qwen.save_pretrained(tmp_path / "qwen")
    adapter = peft_adapter(llama, tmp_path / "a", 1, ["q_proj"], r=2)
    export(run_cli, tmp_path / "llama", tmp_path / "out", adapter)
    qwen_gguf = write_base_gguf(tmp_path / "qwen", tmp_path / "qwen.gguf")
    with pytest.raises(AdaptkitError, match="arch") as caught:
        session(qwen_gguf, [(tmp_path / "out" / "adapter.gguf", 1.0)])
    assert caught.value.path == str(tmp_path / "out" / "adapter.gguf")


def test_adaptkit_generate_runs_a_gguf_base_with_adapter_files(run_cli, tmp_path):
    """``adaptkit generate BASE.gguf -a ...``: PEFT's greedy tokens; adapters.json gives every
    adapter its scale; --prompt is tokenized by the GGUF's own vocabulary."""
    from peft import PeftModel

    base = causal_lm("llama", seed=3, **SIZE)
    base.save_pretrained(tmp_path / "model")
    a = peft_adapter(base, tmp_path / "a", 1, ALL_LINEAR, r=4, b_scale=0.3)
    b = peft_adapter(base, tmp_path / "b", 2, ["q_proj", "v_proj"], r=2, b_scale=0.3)
    (tmp_path / "b.yaml").write_text(f"adapter: {b}\nweight: -0.5\nname: b\n")
    export(run_cli, tmp_path / "model", tmp_path / "one", a)
    export(run_cli, tmp_path / "model", tmp_path / "each", a, tmp_path / "b.yaml", extra=["--lora-inputs"])
    base_gguf = write_base_gguf(tmp_path / "model", tmp_path / "base.gguf")
    peft = PeftModel.from_pretrained(copy.deepcopy(base), a, adapter_name="a")
    peft.load_adapter(b, adapter_name="b")
    peft.add_weighted_adapter(["a", "b"], [1.0, -0.5], "ab", combination_type="cat")
    peft.set_adapter("ab")

    def generate(*args):
        code, out, err = run_cli("generate", base_gguf, *args, "--max-new-tokens", NEW, "--json")
        assert code == 0, err
        return json.loads(out)

    prompt = ",".join(map(str, PROMPTS[1]))
    got = generate("-a", tmp_path / "one" / "adapter.gguf", "--input-ids", prompt)
    assert got["output_ids"] == reference(peft_model(base, a), PROMPTS[1])[0] and got["text"] is None
    got = generate("-a", tmp_path / "each" / "adapters.json", "--input-ids", prompt)
    assert got["output_ids"] == reference(peft, PROMPTS[1])[0]
    got = generate("--prompt", "hi!")
    assert got["input_ids"] == [3 + ord(c) for c in "hi!"]  # the byte tokens of tests' vocabulary
    assert isinstance(got["text"], str) and len(got["output_ids"]) == NEW


def test_adaptkit_generate_refuses_bad_adapter_inputs(run_cli, tmp_path):
    """A downloaded adapters.json is hostile: a file outside its folder, a scale that is not a
    number, a file that is not GGUF, a stray --adapter-name: each one error line, nothing run."""
    from tests.helpers.cli import assert_refused

    base = causal_lm("llama", **SIZE)
    base.save_pretrained(tmp_path / "model")
    a = peft_adapter(base, tmp_path / "a", 1, ["q_proj"], r=2)
    export(run_cli, tmp_path / "model", tmp_path / "each", a, extra=["--lora-inputs"])
    base_gguf = write_base_gguf(tmp_path / "model", tmp_path / "base.gguf")
    manifest = tmp_path / "each" / "adapters.json"
    good = json.loads(manifest.read_text())
    (tmp_path / "outside.gguf").write_bytes((tmp_path / "each" / "a.gguf").read_bytes())
    cases = [
        ({"file": "../outside.gguf", "scale": 1.0}, "must be a file name in this folder"),
        ({"file": "a.gguf", "scale": "1"}, "scale must be a finite number"),
        ({"file": "adapters.json", "scale": 1.0}, "not an adapter GGUF file"),
    ]
    for entry, words in cases:
        manifest.write_text(json.dumps({**good, "adapters": {"a": entry}}))
        args = ["generate", base_gguf, "-a", manifest, "--input-ids", "1,2"]
        assert_refused(run_cli, tmp_path, args, [words, "adapters.a"])
    assert_refused(
        run_cli, tmp_path, ["generate", base_gguf, "-a", a / "adapter_config.json", "--input-ids", "1"],
        "not an adapter GGUF",
    )  # fmt: skip
    assert_refused(
        run_cli,
        tmp_path,
        ["generate", base_gguf, "--adapter-name", "a", "--input-ids", "1"],
        "--adapter-name",
    )
    assert_refused(
        run_cli,
        tmp_path,
        ["generate", base_gguf, "--input-ids", "1,2,999"],
        "outside the vocabulary (size 288)",
    )
