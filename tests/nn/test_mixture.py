"""LoraMixture: frozen adapters under a learnable mixing table, against float64 math; attached,
baked and detached through the same machinery as LoraLinear; refusals that change nothing."""

import pytest
import torch

from adaptkit import Adapter, LoraPair, WeightedAdapter
from adaptkit import nn as lora
from adaptkit.errors import AdaptkitError
from tests.helpers.models import tiny_gpt2, tiny_llama, tokens

LLAMA = ("model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj")
GPT2 = ("transformer.h.0.attn.c_attn", "transformer.h.1.mlp.c_proj")  # HF Conv1D: in × out


def _adapter(model, names, rank, seed):
    """Random factors of ``rank`` at ``names``, shaped as those layers (``out × in``)."""
    g = torch.Generator().manual_seed(seed)
    targets = {}
    for name in names:
        module = model.get_submodule(name)
        out_f, in_f = module.weight.shape
        if lora.module_kind(module) == "conv1d":
            out_f, in_f = in_f, out_f
        A = torch.randn(rank, in_f, generator=g)
        targets[name] = LoraPair(A=A, B=torch.randn(out_f, rank, generator=g), alpha=2.0 * rank)
    return Adapter(targets=targets)


def _inputs(model, names):
    """``a`` at both targets (rank 3), ``b`` at the first only (rank 2): the first target mixes
    adapters of different ranks, the second has one."""
    return [
        WeightedAdapter(_adapter(model, names, 3, seed=1), 0.7, "a"),
        WeightedAdapter(_adapter(model, names[:1], 2, seed=2), -1.3, "b"),
    ]


def _want(inputs, mix, target, column, per_component):
    """``ΔW = Σᵢ Σⱼ c[i, column + δⱼ] · wᵢ · sᵢ · bᵢⱼ aᵢⱼᵀ`` in float64 (``out × in``)."""
    total = 0
    for i, item in enumerate(inputs):
        pair = item.adapter.targets.get(target)
        if pair is None:
            continue
        offsets = torch.arange(pair.rank) if per_component else torch.zeros(pair.rank, dtype=torch.long)
        c = mix[i, column + offsets].double()
        total = total + item.weight * pair.scale * (pair.B.double() * c) @ pair.A.double()
    return total


@pytest.mark.parametrize("per_component", [False, True], ids=["per-target", "per-component"])
@pytest.mark.parametrize(
    ("make", "names"), [(tiny_llama, LLAMA), (tiny_gpt2, GPT2)], ids=["linear", "conv1d"]
)
def test_the_update_is_the_weighted_sum_of_the_adapters(make, names, per_component):
    model = make()
    inputs = _inputs(model, names)
    columns = {names[0]: 0, names[1]: 3 if per_component else 1}
    mix = torch.randn(2, 6 if per_component else 2, generator=torch.Generator().manual_seed(5))
    assert lora.attach_mixture(model, inputs, mix, columns, per_component=per_component) == sorted(names)
    for target in names:
        layer = model.get_submodule(target)
        assert isinstance(layer, lora.LoraMixture) and layer.conv1d == (make is tiny_gpt2)
        want = _want(inputs, mix, target, columns[target], per_component)
        x = torch.randn(4, layer.in_features, generator=torch.Generator().manual_seed(6))
        with torch.no_grad():
            applied = (layer(x) - layer.base(x)).double()
        expected = x.double() @ want.T
        assert float((applied - expected).norm() / expected.norm()) < 1e-5, target
        got = layer.delta_weight().double()
        assert float(((got.T if layer.conv1d else got) - want).norm() / want.norm()) < 1e-6, target


def test_only_the_mixing_table_learns():
    model = tiny_llama()
    inputs = _inputs(model, LLAMA)
    mix = torch.ones(2, 2, requires_grad=True)
    lora.attach_mixture(model, inputs, mix, {LLAMA[0]: 0, LLAMA[1]: 1})
    assert not [n for n, p in model.named_parameters() if p.requires_grad]  # the base is frozen
    assert not [n for n, _ in model.named_parameters() if n.endswith((".A", ".B"))]  # factors: buffers
    model(tokens()).logits.square().mean().backward()
    assert mix.grad is not None and bool((mix.grad[:, 0] != 0).all())
    # b has no factors at the second target: its weight there moves nothing.
    assert float(mix.grad[1, 1]) == 0.0 and float(mix.grad[0, 1]) != 0.0


def test_bake_unbake_and_detach_work_as_for_lora_linear():
    model = tiny_llama()
    originals = {n: model.get_submodule(n) for n in LLAMA}
    weights = {n: m.weight.detach().clone() for n, m in originals.items()}
    ids = tokens()
    with torch.no_grad():
        plain = model(ids).logits
    lora.attach_mixture(model, _inputs(model, LLAMA), torch.full((2, 2), 0.5), {LLAMA[0]: 0, LLAMA[1]: 1})
    assert not lora.lora_layers(model) and sorted(lora.lora_layers(model, lora.LoraLayer)) == sorted(LLAMA)
    with torch.no_grad():
        unbaked = model(ids).logits
        lora.bake(model)
        baked = model(ids).logits
    assert float((unbaked - plain).abs().max()) > 1e-2, "the mixture must change the output"
    torch.testing.assert_close(baked, unbaked, atol=1e-4, rtol=1e-4)
    assert all(not torch.equal(originals[n].weight, weights[n]) for n in LLAMA)
    with pytest.raises(AdaptkitError, match="already baked"):
        lora.bake(model)
    lora.unbake(model)
    for name in LLAMA:
        torch.testing.assert_close(originals[name].weight, weights[name], atol=1e-6, rtol=0)
    lora.detach(model)
    assert all(model.get_submodule(n) is originals[n] for n in LLAMA)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, plain, atol=1e-5, rtol=0)


def test_zero_weight_inputs_are_left_out():
    model = tiny_llama()
    a, b = _inputs(model, LLAMA)
    only_c = WeightedAdapter(_adapter(model, ["model.layers.1.self_attn.o_proj"], 2, seed=3), 0.0, "c")
    columns = {LLAMA[0]: 0, LLAMA[1]: 1, "model.layers.1.self_attn.o_proj": 1}
    names = lora.attach_mixture(
        model, [a, WeightedAdapter(b.adapter, 0.0, "b"), only_c], torch.ones(3, 2), columns
    )
    assert names == sorted(LLAMA)  # o_proj: only a weight-0 input has it
    assert model.get_submodule(LLAMA[0]).A.shape[0] == 3  # a's rank 3; b's 2 columns left out


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("lora-attached", "already has LoRA layers"),
        ("rows", r"mix must be \(2, columns\), one row per input; got \(3, 2\)"),
        ("no-column", "has no column in the mixing table"),
        ("past-the-table", "run past the mixing table's 4 columns"),
        ("no-such-layer", "model.layers.9.mlp.down_proj"),
    ],
)
def test_refusals_change_nothing(case, message):
    model = tiny_llama()
    inputs = _inputs(model, LLAMA)
    mix, columns = torch.ones(2, 4), {LLAMA[0]: 0, LLAMA[1]: 1}
    if case == "lora-attached":
        lora.attach(model, lora.LoraSettings(targets=["k_proj"]))
    elif case == "rows":
        mix = torch.ones(3, 2)
    elif case == "no-column":
        del columns[LLAMA[1]]
    elif case == "past-the-table":
        columns = {LLAMA[0]: 0, LLAMA[1]: 2}  # the first target fits; the second's 3 do not
    else:
        inputs[0].adapter.targets["model.layers.9.mlp.down_proj"] = inputs[0].adapter.targets[LLAMA[1]]

    def state():
        return {n: type(m) for n, m in model.named_modules()}, [p.requires_grad for p in model.parameters()]

    before = state()
    with pytest.raises(AdaptkitError, match=message):
        lora.attach_mixture(model, inputs, mix, columns, per_component=True)
    assert state() == before


def test_a_mixture_refuses_a_second_set_of_layers():
    model = tiny_llama()
    adapter = _adapter(model, LLAMA, 2, seed=4)
    lora.attach_mixture(model, [WeightedAdapter(adapter)], torch.ones(1, 1), dict.fromkeys(LLAMA, 0))
    with pytest.raises(AdaptkitError, match="already has LoRA layers"):
        lora.attach(model, lora.LoraSettings(targets=["k_proj"]))
    with pytest.raises(AdaptkitError, match="already has LoRA layers"):
        lora.load(model, adapter)
    with pytest.raises(AdaptkitError, match="no LoRA layers to extract"):
        lora.extract(model)  # a mixture has no trainable factors of its own
