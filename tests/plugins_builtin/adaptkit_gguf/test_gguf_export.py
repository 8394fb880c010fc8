"""``adaptkit export --gguf``: the file llama.cpp reads, exact per target, and every refusal.

Read back with the ``gguf`` package's own reader and checked in float64: the metadata llama.cpp
needs, tensor names from the ``gguf`` name map, GGML shapes, each target's scale folded exactly
(llama.cpp applies ``alpha / r`` per pair), Llama's query/key rows in llama.cpp's rotary order.
What llama.cpp cannot apply is refused with one line naming the module (the CLI contract).
"""

from __future__ import annotations

import json

import pytest
import torch

from tests.helpers.cli import assert_refused
from tests.helpers.models import causal_lm, tiny_gpt2

gguf = pytest.importorskip("gguf", reason="the test extra installs gguf")

LLAMA = dict(vocab_size=288)


def read(path):
    """(metadata, tensors as float64 in PyTorch orientation) of a GGUF file."""
    import numpy as np

    reader = gguf.GGUFReader(str(path))
    meta = {}
    for field in reader.fields.values():
        if field.types and field.types[0] == gguf.GGUFValueType.STRING:
            meta[field.name] = bytes(field.parts[field.data[0]]).decode()
        elif field.types and field.types[0] != gguf.GGUFValueType.ARRAY:
            meta[field.name] = field.parts[field.data[0]][0].item()
    tensors = {}
    for t in reader.tensors:
        data = np.array(t.data)
        if t.tensor_type == gguf.GGMLQuantizationType.BF16:
            data = torch.from_numpy(data.view(np.int16).copy()).view(torch.bfloat16).float().numpy()
        tensors[t.name] = (torch.from_numpy(data.astype(np.float64)).reshape(*reversed(t.shape.tolist())), t)
    return meta, tensors


def native_adapter(tmp_path, model, targets, *, scaling="alpha/r", seed=0, name="a.safetensors"):
    """A native adapter on ``model``'s modules: ``targets`` maps module -> (rank, alpha)."""
    from adaptkit import Adapter, LoraPair, save_adapter

    g = torch.Generator().manual_seed(seed)
    modules = dict(model.named_modules())
    pairs = {}
    for target, (r, alpha) in targets.items():
        layer = modules[target]
        A = torch.randn(r, layer.in_features, generator=g)
        B = torch.randn(layer.out_features, r, generator=g)
        pairs[target] = LoraPair(A=A, B=B, alpha=alpha, scaling=scaling)
    return save_adapter(Adapter(targets=pairs), tmp_path / name)


@pytest.fixture
def llama(tmp_path):
    base = causal_lm("llama", **LLAMA)
    base.save_pretrained(tmp_path / "model")
    return base, tmp_path / "model"


def test_file_metadata_names_and_folded_scales(llama, tmp_path, run_cli):
    from adaptkit import load_adapter
    from adaptkit_gguf.architectures import pairs_order

    base, model_dir = llama
    targets = {
        "model.layers.0.self_attn.q_proj": (4, 8.0),  # s·r = 8: the file's alpha
        "model.layers.0.self_attn.k_proj": (2, 4.0),  # s·r = 4: folded
        "model.layers.1.mlp.down_proj": (4, 8.0),
        "lm_head": (3, 12.0),  # s·r = 12: folded
    }
    spec = native_adapter(tmp_path, base, targets)
    code, out, err = run_cli(
        "export", "--gguf", "--model", model_dir, "-a", spec, "-o", tmp_path / "out", "--json"
    )
    assert code == 0, err
    report = json.loads(out)
    assert report["alpha"] == 8.0 and report["scales_folded"] == 2 and report["targets"] == 4
    meta, tensors = read(tmp_path / "out" / "adapter.gguf")
    assert meta["general.type"] == "adapter" and meta["adapter.type"] == "lora"
    assert meta["general.architecture"] == "llama" and meta["adapter.lora.alpha"] == 8.0
    names = {
        "model.layers.0.self_attn.q_proj": "blk.0.attn_q.weight",
        "model.layers.0.self_attn.k_proj": "blk.0.attn_k.weight",
        "model.layers.1.mlp.down_proj": "blk.1.ffn_down.weight",
        "lm_head": "output.weight",
    }
    assert set(tensors) == {n + s for n in names.values() for s in (".lora_a", ".lora_b")}
    adapter = load_adapter(spec)
    config = base.config
    heads = {"q_proj": config.num_attention_heads, "k_proj": config.num_key_value_heads}
    for target, name in names.items():
        pair = adapter.targets[target]
        a, ti_a = tensors[name + ".lora_a"]
        b, ti_b = tensors[name + ".lora_b"]
        # GGML shapes as llama.cpp checks them: ne(A) = [in, r], ne(B) = [r, out].
        assert ti_a.shape.tolist() == [pair.in_features, pair.rank]
        assert ti_b.shape.tolist() == [pair.rank, pair.out_features]
        want = pair.delta(torch.float64)
        leaf = target.rsplit(".", 1)[-1]
        if leaf in heads:  # llama.cpp's rotary order: rows move, the update moves with them
            want = want[pairs_order(want.shape[0], heads[leaf])]
        got = (meta["adapter.lora.alpha"] / pair.rank) * b @ a  # what llama.cpp computes
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
        assert want.abs().max() > 0.1


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_adapter_dtype(llama, tmp_path, run_cli, dtype):
    base, model_dir = llama
    spec = native_adapter(tmp_path, base, {"model.layers.0.self_attn.v_proj": (4, 8.0)})
    code, _, err = run_cli(
        "export", "--gguf", "--model", model_dir, "-a", spec, "-o", tmp_path / "out", "--adapter-dtype", dtype
    )
    assert code == 0, err
    _, tensors = read(tmp_path / "out" / "adapter.gguf")
    want = {"float16": gguf.GGMLQuantizationType.F16, "bfloat16": gguf.GGMLQuantizationType.BF16}[dtype]
    assert {t.tensor_type for _, t in tensors.values()} == {want}
    from adaptkit import load_adapter

    pair = load_adapter(spec).targets["model.layers.0.self_attn.v_proj"]
    b, _ = tensors["blk.0.attn_v.weight.lora_b"]
    a, _ = tensors["blk.0.attn_v.weight.lora_a"]
    rel = ((2.0 * b @ a - pair.delta(torch.float64)).norm() / pair.delta(torch.float64).norm()).item()
    assert 0 < rel < (1e-2 if dtype == "bfloat16" else 1e-3)


def test_lora_inputs_writes_one_file_per_adapter_and_a_manifest(llama, tmp_path, run_cli):
    base, model_dir = llama
    a = native_adapter(tmp_path, base, {"model.layers.0.self_attn.q_proj": (4, 8.0)}, name="a.safetensors")
    b = native_adapter(tmp_path, base, {"model.layers.1.mlp.up_proj": (2, 2.0)}, seed=1, name="b.safetensors")
    (tmp_path / "b.yaml").write_text(f"adapter: {b}\nweight: -0.5\nname: style\n")
    code, out, err = run_cli(
        "export", "--gguf", "--lora-inputs", "--model", model_dir, "-a", a, "-a", tmp_path / "b.yaml",
        "-o", tmp_path / "out", "--json",
    )  # fmt: skip
    assert code == 0, err
    manifest = json.loads((tmp_path / "out" / "adapters.json").read_text())
    entries = manifest["adapters"]
    assert [e["scale"] for e in entries.values()] == [1.0, -0.5]
    assert entries["style"]["file"] == "style.gguf" and entries["style"]["alpha"] == 2.0
    assert manifest["llama_server"].endswith("--lora-scaled style.gguf -0.5")
    for entry in entries.values():
        meta, _ = read(tmp_path / "out" / entry["file"])
        assert meta["general.type"] == "adapter"
    assert not (tmp_path / "out" / "adapter.gguf").exists()
    assert json.loads(out)["files"] == [e["file"] for e in entries.values()]


def test_a_saved_module_is_refused_with_its_name(llama, tmp_path, run_cli):
    _, model_dir = llama
    from adaptkit import Adapter, LoraPair, SavedModule, save_adapter

    adapter = Adapter(
        targets={
            "model.layers.0.self_attn.q_proj": LoraPair(A=torch.ones(2, 64), B=torch.ones(64, 2), alpha=2.0)
        },
        saved={"lm_head": SavedModule(params={"weight": torch.zeros(288, 64)}, origin="modules_to_save")},
    )
    spec = save_adapter(adapter, tmp_path / "saved.safetensors")
    line = assert_refused(
        run_cli, tmp_path, ["export", "--gguf", "--model", model_dir, "-a", spec, "-o", tmp_path / "out"],
        ["lm_head", "modules_to_save", "LoRA pairs only"],
    )  # fmt: skip
    assert "--merged" in line


def test_refusals_name_the_module_and_the_reason(tmp_path, run_cli, capsys):
    # A LoRA on the head of a base that ties it to the embeddings.
    tied = causal_lm("llama", vocab_size=288, tie_word_embeddings=True)
    tied.save_pretrained(tmp_path / "tied")
    spec = native_adapter(tmp_path, tied, {"lm_head": (2, 4.0)}, name="head.safetensors")
    assert_refused(
        run_cli, tmp_path,
        ["export", "--gguf", "--model", tmp_path / "tied", "-a", spec, "-o", tmp_path / "o"],
        ["lm_head", "ties", "token embeddings"],
    )  # fmt: skip
    # An architecture nobody verified in llama.cpp.
    gpt2 = tiny_gpt2()
    gpt2.save_pretrained(tmp_path / "gpt2")
    capsys.readouterr()  # transformers' own warnings about the config are not the command's
    from adaptkit import Adapter, LoraPair, save_adapter

    pair = LoraPair(A=torch.ones(2, 32), B=torch.ones(96, 2), alpha=2.0)
    spec = save_adapter(Adapter(targets={"transformer.h.0.attn.c_attn": pair}), tmp_path / "g.safetensors")
    assert_refused(
        run_cli, tmp_path,
        ["export", "--gguf", "--model", tmp_path / "gpt2", "-a", spec, "-o", tmp_path / "o"],
        ["model type 'gpt2'", "verified"],
    )  # fmt: skip
    # No adapter at all.
    assert_refused(
        run_cli, tmp_path, ["export", "--gguf", "--model", tmp_path / "tied", "-o", tmp_path / "o"],
        "needs at least one --adapter",
    )  # fmt: skip


def _variant(kind):
    """An adapter on the tiny Llama whose one target is more than a plain linear pair, or that
    trains token rows."""
    from adaptkit import Adapter, LoraPair, TrainableTokens

    g = torch.Generator().manual_seed(0)
    q, emb = "model.layers.0.self_attn.q_proj", "model.embed_tokens"
    plain = LoraPair(A=torch.randn(2, 64, generator=g), B=torch.randn(64, 2, generator=g), alpha=2.0)
    pairs = {
        "dora": {q: LoraPair(A=plain.A, B=plain.B, alpha=2.0, magnitude=torch.rand(64, generator=g) + 1)},
        "lora-bias": {q: LoraPair(A=plain.A, B=plain.B, alpha=2.0, bias=torch.randn(64, generator=g))},
        "embedding": {
            emb: LoraPair(A=plain.A, B=torch.randn(288, 2, generator=g), alpha=2.0, kind="embedding")
        },
        "tokens": {q: plain},
    }[kind]
    tokens = {emb: TrainableTokens([5], torch.randn(1, 64, generator=g))} if kind == "tokens" else {}
    return Adapter(targets=pairs, tokens=tokens)


@pytest.mark.parametrize(
    ("kind", "words"),
    [
        ("dora", ["q_proj", "DoRA", "plain"]),
        ("lora-bias", ["q_proj", "LoRA bias", "plain"]),
        ("embedding", ["embed_tokens", "embedding LoRA", "plain"]),
        ("tokens", ["embed_tokens", "token rows"]),
    ],
)
def test_variants_llama_cpp_cannot_apply_are_refused(llama, tmp_path, run_cli, kind, words):
    from adaptkit import save_adapter

    _, model_dir = llama
    spec = save_adapter(_variant(kind), tmp_path / f"{kind}.safetensors")
    line = assert_refused(
        run_cli,
        tmp_path,
        ["export", "--gguf", "--model", model_dir, "-a", spec, "-o", tmp_path / "out"],
        words,
    )
    assert "--merged" in line
