"""The combine engine against PEFT's add_weighted_adapter on the same PEFT adapters.

FIELD-NOTES pitfalls as tests: PEFT `cat` is exact for plain LoRA (ours must equal it); PEFT
`linear` adds cross terms; with rsLoRA inputs PEFT's combined adapter inherits
`use_rslora=True` with `lora_alpha = r`, so `svd` and `cat` come out over-scaled by
`sqrt(r)` (peft #3761). Ours must reproduce none of that. (PEFT 0.21 no longer double-scales
`svd` when alpha != r; the test below pins that both agree there.)
"""

import copy

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model

from adaptkit import WeightedAdapter, load_spec
from adaptkit.combine import combine
from tests.helpers.models import tiny_llama

WEIGHTS = [0.8, 0.5]


def _make(tmp, base, shapes, rslora):
    dirs = []
    for i, (r, alpha) in enumerate(shapes):
        torch.manual_seed(10 + i)
        cfg = LoraConfig(
            r=r,
            lora_alpha=alpha,
            init_lora_weights=False,
            use_rslora=rslora,
            target_modules=["q_proj", "v_proj"],
        )
        get_peft_model(copy.deepcopy(base), cfg).save_pretrained(tmp / f"a{i}")
        dirs.append(tmp / f"a{i}")
    return dirs


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tiny_llama()
    return base, _make(tmp_path_factory.mktemp("peft"), base, [(4, 16), (4, 2)], rslora=False)


@pytest.fixture(scope="module")
def setup_rslora(tmp_path_factory):
    base = tiny_llama()
    return base, _make(tmp_path_factory.mktemp("rslora"), base, [(4, 16), (8, 2)], rslora=True)


def peft_combination(base, dirs, combination_type, **kw):
    model = PeftModel.from_pretrained(copy.deepcopy(base), dirs[0], adapter_name="a0")
    model.load_adapter(dirs[1], adapter_name="a1")
    model.add_weighted_adapter(["a0", "a1"], WEIGHTS, "combo", combination_type=combination_type, **kw)
    model.set_adapter("combo")
    merged = model.merge_and_unload()
    params = dict(base.named_parameters())
    return {
        n.removesuffix(".weight"): (p - params[n]).detach().double()
        for n, p in merged.named_parameters()
        if n.endswith(".weight") and not torch.equal(p, params[n])
    }


def exact(dirs):
    adapters = [load_spec(d) for d in dirs]
    return {
        t: sum(w * a.targets[t].delta(torch.float64) for a, w in zip(adapters, WEIGHTS, strict=True))
        for t in adapters[0].targets
    }


def ours(dirs, strategy, **kw):
    inputs = [
        WeightedAdapter(load_spec(d), w, f"a{i}") for i, (d, w) in enumerate(zip(dirs, WEIGHTS, strict=True))
    ]
    out = combine(inputs, strategy, **kw).adapter
    return {t: p.delta(torch.float64) for t, p in out.targets.items()}


def worst(got, ref):
    return max(float((got[t] - ref[t]).norm() / ref[t].norm()) for t in ref)


def test_cat_equals_peft_cat(setup):
    base, dirs = setup
    peft_cat = peft_combination(base, dirs, "cat")
    assert worst(ours(dirs, "cat"), peft_cat) < 2e-6
    assert worst(peft_cat, exact(dirs)) < 2e-6  # PEFT's cat is exact too


def test_peft_linear_cross_terms_not_reproduced(setup):
    base, dirs = setup
    ref = exact(dirs)
    assert worst(ours(dirs, "linear"), ref) < 1e-6
    assert worst(peft_combination(base, dirs, "linear"), ref) > 0.3


def test_svd_agrees_with_peft_for_plain_lora(setup):
    base, dirs = setup
    ref = exact(dirs)
    # Rank 8 = Σ r_i, so the truncation is exact.
    assert worst(ours(dirs, "svd", rank=8), ref) < 1e-6
    assert worst(peft_combination(base, dirs, "svd", svd_rank=8), ref) < 1e-5


@pytest.mark.parametrize(("strategy", "kw"), [("svd", {"svd_rank": 12}), ("cat", {})])
def test_peft_rslora_over_scaling_not_reproduced(setup_rslora, strategy, kw):
    base, dirs = setup_rslora
    ref = exact(dirs)
    assert worst(ours(dirs, strategy, **({"rank": 12} if strategy == "svd" else {})), ref) < 1e-6
    # PEFT's result is ΔW·sqrt(12): relative error sqrt(12) - 1 ≈ 2.46.
    assert worst(peft_combination(base, dirs, strategy, **kw), ref) == pytest.approx(12**0.5 - 1, rel=1e-3)
