"""The one place W + ΔW is computed (adaptkit.nn.baking.add_delta), against float64 math,
and the three bakes that go through it (modules, LoRA layers, streamed checkpoints)."""

import pytest
import torch

from adaptkit.errors import AdaptkitError
from adaptkit.lora import LoraPair
from adaptkit.nn.baking import add_delta, target_delta


def _pair(out_f=6, in_f=5, r=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return LoraPair(A=torch.randn(r, in_f, generator=g), B=torch.randn(out_f, r, generator=g), alpha=3.0)


@pytest.mark.parametrize("conv1d", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_add_delta_matches_float64(conv1d, dtype):
    pair = _pair()
    W = torch.randn(5, 6) if conv1d else torch.randn(6, 5)
    W = W.to(dtype)
    delta = target_delta(pair, W, conv1d=conv1d, weight=-0.5)
    new = add_delta(W, delta)
    ref64 = (pair.B.double() @ pair.A.double()) * (3.0 / 2) * -0.5
    ref = (W.double() + (ref64.T if conv1d else ref64)).to(dtype)
    assert new.dtype == dtype
    atol = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float64: 1e-12}[dtype]  # ~1 ulp at |W| ≈ 3
    assert torch.allclose(new.double(), ref.double(), atol=atol, rtol=0)
    assert delta.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert float((new.double() - W.double()).abs().max()) > 0.1  # the update changed W


def test_overflow_in_the_target_dtype_is_refused():
    W = torch.full((6, 5), 60000.0, dtype=torch.float16)
    delta = torch.full((6, 5), 10000.0)
    with pytest.raises(AdaptkitError, match=r"overflows torch\.float16"):
        add_delta(W, delta, key="t")
    # The same sum is fine when the result is float32 (the streamed checkpoint asks for W's dtype).
    assert torch.isfinite(add_delta(W.float(), delta)).all()
    with pytest.raises(AdaptkitError, match=r"overflows torch\.float16"):
        add_delta(W.float(), delta, dtype=torch.float16)


def test_layer_bake_and_module_bake_agree():
    from adaptkit import Adapter
    from adaptkit import nn as lora
    from adaptkit.nn.baking import bake_adapter

    torch.manual_seed(0)
    plain = torch.nn.Sequential(torch.nn.Linear(5, 6))
    layered = torch.nn.Sequential(torch.nn.Linear(5, 6))
    layered.load_state_dict(plain.state_dict())
    adapter = Adapter(targets={"0": _pair()})
    bake_adapter(plain, adapter)
    lora.load(layered, adapter)
    lora.bake(layered)
    assert torch.allclose(plain[0].weight, layered[0].base.weight, atol=1e-6)
    lora.unbake(layered)
    lora.detach(layered)
    assert not torch.allclose(plain[0].weight, layered[0].weight, atol=1e-3)
