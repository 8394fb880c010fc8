"""adaptkit combine vs PEFT add_weighted_adapter, in one process, on the same adapters.

For each layer shape, N rank-16 adapters with alpha != r are built once; then
* ``svd``     — PEFT ``svd`` (dense ΔW, full SVD) vs adaptkit ``linear --rank 16`` (factored),
* ``cat``     — PEFT ``cat`` vs adaptkit ``cat`` (both exact),
* ``ties_svd``— PEFT ``ties_svd`` vs adaptkit ``ties`` (variant peft) at rank 16,
timing each, measuring peak extra RSS, and the relative Frobenius error against a float64
reference computed independently here (the exact weighted sum; dense float64 TIES). The
optimal rank-k error comes from the eigenvalues of the small Gram product, not from either
tool. Then, adaptkit alone, combining two adapters over a Llama-7B-shaped target set
(32 layers × q,k,v,o,gate,up,down) is compared with just loading and saving those files.

    python -m benchmarks.bench_combine            # full: 4096x4096, 4096x11008, 7B set
    python -m benchmarks.bench_combine --quick    # small shapes, a few layers
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import best_time, emit, mib, parser, peak_rss, run_info

RANK = 16


def make_pairs(out_f: int, in_f: int, n: int, seed: int = 0):
    from adaptkit.lora import LoraPair

    g = torch.Generator().manual_seed(seed)
    alphas = [32.0, 8.0, 24.0]
    return [
        LoraPair(
            A=torch.randn(RANK, in_f, generator=g) / math.sqrt(in_f),
            B=torch.randn(out_f, RANK, generator=g) / math.sqrt(RANK),
            alpha=alphas[i % 3],
        )
        for i in range(n)
    ]


# --- the peer ----------------------------------------------------------------------


class _One(torch.nn.Module):
    def __init__(self, out_f: int, in_f: int) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(in_f, out_f, bias=False)


def peft_model(pairs):
    from peft import LoraConfig, get_peft_model

    out_f, in_f = pairs[0].out_features, pairs[0].in_features
    model = None
    for i, p in enumerate(pairs):
        cfg = LoraConfig(r=p.rank, lora_alpha=p.alpha, target_modules=["proj"])
        if model is None:
            model = get_peft_model(_One(out_f, in_f), cfg, adapter_name="a0")
        else:
            model.add_adapter(f"a{i}", cfg)
        layer = model.base_model.model.proj
        layer.lora_A[f"a{i}"].weight.data.copy_(p.A)
        layer.lora_B[f"a{i}"].weight.data.copy_(p.B)
    return model


def peft_combine(model, n, weights, combination_type, **kw):
    """Time this: PEFT's add_weighted_adapter alone."""
    names = [f"a{i}" for i in range(n)]
    if "combo" in model.peft_config:
        model.delete_adapter("combo")
    model.add_weighted_adapter(names, weights, "combo", combination_type=combination_type, **kw)
    return model


def peft_delta(model):
    return model.base_model.model.proj.get_delta_weight("combo").double()


# --- adaptkit ----------------------------------------------------------------------


def ours(pairs, weights, strategy, **kw):
    """Time this: adaptkit's combine alone."""
    from adaptkit import WeightedAdapter
    from adaptkit.adapter import Adapter
    from adaptkit.combine import combine

    inputs = [
        WeightedAdapter(Adapter({"proj": p}), w, f"a{i}")
        for i, (p, w) in enumerate(zip(pairs, weights, strict=True))
    ]
    return combine(inputs, strategy, **kw).adapter


def ours_delta(adapter):
    return adapter.targets["proj"].delta(torch.float64)


# --- independent float64 references ---------------------------------------------------


def exact_sum(pairs, weights):
    return sum(w * p.scale * (p.B.double() @ p.A.double()) for p, w in zip(pairs, weights, strict=True))


def optimal_error(pairs, weights, k):
    """sqrt(Σ_{i>k} σ_i²)/||ΔW|| with σ² the eigenvalues of (B̃ᵀB̃)(ÃÃᵀ) (R × R)."""
    Bt = torch.cat([w * p.scale * p.B.double() for p, w in zip(pairs, weights, strict=True)], dim=1)
    At = torch.cat([p.A.double() for p in pairs], dim=0)
    ev = torch.linalg.eigvals((Bt.T @ Bt) @ (At @ At.T)).real.clamp(min=0).sort(descending=True).values
    return math.sqrt(float(ev[k:].sum()) / float(ev.sum()))


def ties_reference(pairs, weights, density):
    deltas = torch.stack([p.scale * (p.B.double() @ p.A.double()) for p in pairs])
    for d in deltas:
        k = int(density * d.numel())
        thr = d.abs().flatten().kthvalue(d.numel() - k + 1).values
        d.mul_(d.abs() >= thr)
    majority = torch.where(deltas.sum(0) >= 0, 1.0, -1.0).double()
    agree = (torch.sign(deltas) == majority).double()
    w = torch.tensor(weights, dtype=torch.float64)[:, None, None]
    return (deltas * w * agree).sum(0) / agree.sum(0).clamp(min=1)


def rel(x, ref):
    return float((x - ref).norm() / ref.norm())


def bench_shape(out_f, in_f, n, peft_repeat, density=0.5):
    pairs = make_pairs(out_f, in_f, n)
    weights = [1.0, -0.6, 0.8][:n]
    ref = exact_sum(pairs, weights)
    opt = optimal_error(pairs, weights, RANK)
    model = peft_model(pairs)
    rows = []

    def run(method, peft_fn, ours_fn, reference, optimal=None):
        with peak_rss() as peft_peak:
            combined = peft_fn()
        got_peft = peft_delta(combined)
        with peak_rss() as ours_peak:
            combined = ours_fn()
        got_ours = ours_delta(combined)
        t_peft = best_time(peft_fn, repeat=peft_repeat, warmup=0)
        t_ours = best_time(ours_fn, repeat=3)
        rows.append(
            {
                "shape": f"{out_f}x{in_f}",
                "adapters": n,
                "method": method,
                "peft_s": round(t_peft, 4),
                "adaptkit_s": round(t_ours, 5),
                "speedup": round(t_peft / t_ours, 1),
                "peft_rel_err": rel(got_peft, reference),
                "adaptkit_rel_err": rel(got_ours, reference),
                "optimal_rel_err": optimal,
                "adaptkit_minus_optimal": None if optimal is None else rel(got_ours, reference) - optimal,
                "peft_peak_mib": round(mib(peft_peak.bytes), 1),
                "adaptkit_peak_mib": round(mib(ours_peak.bytes), 1),
            }
        )

    run(
        "svd (rank 16)",
        lambda: peft_combine(model, n, weights, "svd", svd_rank=RANK),
        lambda: ours(pairs, weights, "linear", rank=RANK),
        ref,
        opt,
    )
    run(
        "cat",
        lambda: peft_combine(model, n, weights, "cat"),
        lambda: ours(pairs, weights, "cat"),
        ref,
        0.0,
    )
    ties_ref = ties_reference(pairs, weights, density)
    run(
        "ties_svd (rank 16)",
        lambda: peft_combine(model, n, weights, "ties_svd", svd_rank=RANK, density=density),
        lambda: ours(pairs, weights, "ties", rank=RANK, params={"density": density}),
        ties_ref,
    )
    return rows


def bench_7b_set(layers, tmp: Path):
    """Two adapters over a Llama-7B-shaped target set: combine vs plain load+save."""
    from adaptkit import Adapter, WeightedAdapter, load_adapter, save_adapter
    from adaptkit.combine import combine

    shapes = {
        "q_proj": (4096, 4096),
        "k_proj": (4096, 4096),
        "v_proj": (4096, 4096),
        "o_proj": (4096, 4096),
        "gate_proj": (11008, 4096),
        "up_proj": (11008, 4096),
        "down_proj": (4096, 11008),
    }
    paths = []
    for s in range(2):
        targets = {}
        for layer in range(layers):
            for proj, (o, i) in shapes.items():
                group = "mlp" if proj in ("gate_proj", "up_proj", "down_proj") else "self_attn"
                targets[f"model.layers.{layer}.{group}.{proj}"] = make_pairs(o, i, 1, seed=1000 * s + layer)[
                    0
                ]
        paths.append(save_adapter(Adapter(targets), tmp / f"in{s}.safetensors"))
    size = sum(p.stat().st_size for p in paths)

    def io_only():
        a, _b = load_adapter(paths[0]), load_adapter(paths[1])
        save_adapter(a, tmp / "io.safetensors", overwrite=True)

    def with_combine():
        a, b = load_adapter(paths[0]), load_adapter(paths[1])
        res = combine([WeightedAdapter(a, 1.0, "a"), WeightedAdapter(b, 0.5, "b")], "linear", rank=RANK)
        save_adapter(res.adapter, tmp / "out.safetensors", overwrite=True)

    t_io = best_time(io_only, repeat=3)
    with peak_rss() as peak:
        with_combine()
    t_all = best_time(with_combine, repeat=3)
    return {
        "targets": layers * len(shapes),
        "input_mib": round(mib(size), 1),
        "load_save_s": round(t_io, 3),
        "load_combine_save_s": round(t_all, 3),
        "ratio": round(t_all / t_io, 2),
        "combine_ms_per_target": round(1000 * (t_all - t_io) / (layers * len(shapes)), 2),
        "peak_extra_mib": round(mib(peak.bytes), 1),
    }


def main(argv=None):
    args = parser(__doc__, "small shapes (about a minute)").parse_args(argv)
    torch.manual_seed(0)
    started = time.time()
    if args.quick:
        shapes, layers, peft_repeat = [(1024, 1024, 2), (2752, 1024, 3)], 2, 1
    else:
        shapes, layers, peft_repeat = [(4096, 4096, 2), (4096, 4096, 3), (11008, 4096, 2)], 32, 1
    rows = []
    for out_f, in_f, n in shapes:
        rows += bench_shape(out_f, in_f, n, peft_repeat)
    with tempfile.TemporaryDirectory() as tmp:
        seven_b = bench_7b_set(layers, Path(tmp))
    emit(
        "combine",
        {
            **run_info(args.quick, "adaptkit", "peft", "torch"),
            "rows": rows,
            "llama7b_shaped": seven_b,
            "seconds": round(time.time() - started, 1),
        },
        args.json,
    )


if __name__ == "__main__":
    main()
