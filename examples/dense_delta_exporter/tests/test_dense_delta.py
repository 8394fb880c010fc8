"""The dense-delta exporter: adaptkit's exporter contract kit, ΔW against float64 math, its
option from the command line, and its refusals."""

import pytest
import torch
from adaptkit_densedelta import DenseDeltaExporter
from safetensors import safe_open

from adaptkit.api import Adapter, LoraPair, WeightedAdapter
from adaptkit.testing import check_exporter, export_in_process, kit_workspace, run_export_cli

#: Relative rounding of one cast from float64 (half an ulp: 2⁻ᵖ for p mantissa bits).
ROUNDING = {"float32": 2.0**-24, "float16": 2.0**-11, "bfloat16": 2.0**-8}
Q, V, OUT = (f"model.layers.{i}.self_attn.{p}_proj" for i, p in ((0, "q"), (1, "v"), (0, "o")))


def test_contract(tmp_path):
    check_exporter(DenseDeltaExporter(), tmp_path)


def _pair(out_f, in_f, rank, seed, **kw):
    g = torch.Generator().manual_seed(seed)
    return LoraPair(torch.randn(rank, in_f, generator=g), torch.randn(out_f, rank, generator=g), **kw)


def _adapters():
    """Two adapters sharing q_proj, one with rsLoRA scaling, the second at weight -0.5."""
    a = Adapter({Q: _pair(64, 64, 4, 1, alpha=8.0), V: _pair(32, 64, 2, 2, alpha=2.0)})
    b = Adapter(
        {Q: _pair(64, 64, 2, 3, alpha=4.0, scaling="alpha/sqrt(r)"), OUT: _pair(64, 64, 3, 4, alpha=3.0)}
    )
    return [WeightedAdapter(a, 1.0, "a"), WeightedAdapter(b, -0.5, "b")]


def _reference(adapters):
    """``ΔW_t = Σ wᵢ·sᵢ·Bᵢ·Aᵢ`` in float64, from the factors and the scaling rules themselves."""
    want = {}
    for item in adapters:
        for target, p in item.adapter.targets.items():
            scale = p.alpha / (p.rank**0.5 if p.scaling == "alpha/sqrt(r)" else p.rank)
            term = item.weight * scale * (p.B.double() @ p.A.double())
            want[target] = want.get(target, 0) + term
    return want


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_delta_is_the_float64_sum_rounded_once(tmp_path, dtype):
    model_dir, _ = kit_workspace(tmp_path)
    adapters = _adapters()
    out = tmp_path / "out"
    report = export_in_process(DenseDeltaExporter(), model_dir, adapters, out, options={"delta_dtype": dtype})
    want = _reference(adapters)
    assert report["targets"] == 3 and report["delta_dtype"] == dtype
    with safe_open(out / "deltas.safetensors", "pt") as f:
        assert sorted(f.keys()) == sorted(want) and f.metadata()["dtype"] == dtype
        for target, w in want.items():
            got = f.get_tensor(target)
            assert got.dtype == getattr(torch, dtype) and got.shape == w.shape
            assert float(w.abs().max()) > 1.0  # a real update, not zeros
            err = (got.double() - w).abs()
            assert bool((err <= ROUNDING[dtype] * w.abs() + 1e-30).all()), (target, float(err.max()))
            assert report["frobenius_norm"][target] == pytest.approx(float(w.norm()), rel=1e-12)


def test_delta_dtype_from_the_command_line(tmp_path):
    model_dir, adapter = kit_workspace(tmp_path)
    argv = ["export", "--dense-delta", "--model", model_dir, "-a", adapter, "--delta-dtype", "bfloat16"]
    ok, merged = run_export_cli(
        DenseDeltaExporter(),
        [
            {"argv": [*argv, "-o", tmp_path / "out"]},
            {"argv": ["export", "--merged", "--model", model_dir, "-a", adapter, "--delta-dtype", "float16",
                      "-o", tmp_path / "merged"]},
        ],
        tmp_path / "cli",
    )  # fmt: skip
    assert ok["code"] == 0, ok["err"]
    with safe_open(tmp_path / "out" / "deltas.safetensors", "pt") as f:
        names = list(f.keys())
        assert names and {f.get_tensor(k).dtype for k in names} == {torch.bfloat16}
    assert merged["code"] == 2 and not (tmp_path / "merged").exists()
    assert merged["err"].startswith("error: --delta-dtype is an option of --dense-delta, not of --merged")


def test_refuses_adapters_that_do_not_fit_the_model_and_saved_modules(tmp_path):
    from adaptkit.api import AdaptkitError, SavedModule

    model_dir, _ = kit_workspace(tmp_path)
    wrong = Adapter({Q: _pair(64, 32, 2, 5, alpha=2.0)})
    with pytest.raises(AdaptkitError, match=r"adapter is 64×32 .* but the model's layer is 64×64"):
        export_in_process(
            DenseDeltaExporter(), model_dir, [WeightedAdapter(wrong, 1.0, "w")], tmp_path / "o1"
        )
    head = SavedModule(params={"weight": torch.zeros(80, 64)})
    saving = Adapter({Q: _pair(64, 64, 2, 6, alpha=2.0)}, saved={"lm_head": head})
    with pytest.raises(AdaptkitError, match="lm_head is saved whole"):
        export_in_process(
            DenseDeltaExporter(), model_dir, [WeightedAdapter(saving, 1.0, "s")], tmp_path / "o2"
        )
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()
