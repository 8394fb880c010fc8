"""Shared fixtures: small adapters built in code, raw safetensors crafting, CLI runner."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def make_adapter(seed: int = 0, *, dtype=None, shapes=None, alphas=None, scaling="alpha/r"):
    """A random adapter over a few Llama-like targets with mixed ranks and alphas."""
    import torch

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


def raw_safetensors(header: dict, data: bytes, *, header_text: str | None = None) -> bytes:
    """Bytes of a safetensors file with exactly the given header (no validation)."""
    text = header_text if header_text is not None else json.dumps(header)
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw + data


@pytest.fixture
def adapter_factory() -> Callable:
    return make_adapter


@pytest.fixture
def run_cli(capsys):
    """Run ``adaptkit ARGS`` in-process; returns (exit code, stdout, stderr)."""
    from adaptkit.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        code = main([str(a) for a in args])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


@pytest.fixture(autouse=True)
def _fresh_registry():
    from adaptkit.plugins import reset_registry

    reset_registry()
    yield
    reset_registry()
