"""Adapters built in code (``make_adapter``) and with the real PEFT library (``peft_adapter``)."""

from __future__ import annotations

import copy

import torch


def make_adapter(seed: int = 0, *, dtype=None, shapes=None, alphas=None, scaling="alpha/r"):
    """A random adapter over a few Llama-like targets with mixed ranks and alphas."""
    from adaptkit import Adapter, BaseModelInfo, LoraPair

    g = torch.Generator().manual_seed(seed)
    shapes = shapes or {
        "model.layers.0.self_attn.q_proj": (24, 16, 4),
        "model.layers.0.self_attn.v_proj": (8, 16, 2),
        "model.layers.1.mlp.down_proj": (16, 40, 3),
    }
    alphas = alphas or {}
    targets = {}
    for name, (out_f, in_f, r) in shapes.items():
        A = torch.randn(r, in_f, generator=g, dtype=torch.float32)
        B = torch.randn(out_f, r, generator=g, dtype=torch.float32)
        if dtype is not None:
            A, B = A.to(dtype), B.to(dtype)
        targets[name] = LoraPair(A=A, B=B, alpha=float(alphas.get(name, 2 * r)), scaling=scaling)
    return Adapter(targets=targets, base_model=BaseModelInfo(name="tiny-llama"))


def peft_adapter(base, folder, seed, targets, *, r=4, alpha=None, b_scale=None, **config):
    """A PEFT adapter folder for ``base`` with random factors (``init_lora_weights=False``, seeded),
    ``lora_alpha`` = ``alpha`` or ``2 r``; ``b_scale`` multiplies every B (a moderate update);
    ``config`` goes to ``LoraConfig``. Returns ``folder``."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    alpha = 2 * r if alpha is None else alpha
    settings = LoraConfig(r=r, lora_alpha=alpha, target_modules=targets, init_lora_weights=False, **config)
    model = get_peft_model(copy.deepcopy(base), settings)
    if b_scale is not None:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.mul_(b_scale)
    model.save_pretrained(folder)
    return folder


def trained_like_adapter(seed: int, targets=("q_proj", "v_proj", "down_proj"), rank: int = 4):
    """An adapter on ``tiny_llama()`` with random non-zero ``B`` (as after training), alpha = 2r."""
    from adaptkit import nn as lora
    from tests.helpers.models import tiny_llama

    model = tiny_llama()
    torch.manual_seed(seed)
    lora.attach(model, lora.LoraSettings(targets=list(targets), rank=rank, alpha=2.0 * rank))
    with torch.no_grad():
        for layer in lora.lora_layers(model).values():
            layer.lora_B.normal_(0, 0.3)
    return lora.extract(model)


def token_records(seed: int, n: int = 12, length: int = 10) -> list[list[int]]:
    """``n`` random token sequences (ids 3..119) for tuning sets."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 120, (length,), generator=g).tolist() for _ in range(n)]
