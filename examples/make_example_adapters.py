"""Regenerate the small example adapters in ``examples/adapters/`` (deterministic).

They target a tiny Llama layout (hidden size 64, 2 layers, q/k/v/o projections) and have
different ranks and alphas, one with rsLoRA scaling — enough to exercise every strategy.

    python examples/make_example_adapters.py
"""

from pathlib import Path

import torch

from adaptkit import Adapter, BaseModelInfo, LoraPair, save_adapter

HERE = Path(__file__).resolve().parent


def make(seed: int, rank: int, alpha: float, scaling: str) -> Adapter:
    g = torch.Generator().manual_seed(seed)
    targets = {}
    for layer in range(2):
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            A = torch.randn(rank, 64, generator=g) / 8.0
            B = torch.randn(64, rank, generator=g) * 0.05
            targets[f"model.layers.{layer}.self_attn.{proj}"] = LoraPair(
                A=A, B=B, alpha=alpha, scaling=scaling
            )
    return Adapter(
        targets=targets,
        base_model=BaseModelInfo(name="adaptkit/tiny-llama"),
        provenance={"example": f"random factors, seed {seed}"},
    )


if __name__ == "__main__":
    out = HERE / "adapters"
    out.mkdir(exist_ok=True)
    save_adapter(make(1, 8, 16.0, "alpha/r"), out / "skill_a.safetensors", overwrite=True)
    save_adapter(make(2, 4, 8.0, "alpha/sqrt(r)"), out / "skill_b.safetensors", overwrite=True)
    print(f"wrote {out}/skill_a.safetensors and skill_b.safetensors")
