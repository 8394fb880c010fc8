"""The training-backend contract kit: run it against your backend in your own tests.

::

    from adaptkit.testing import check_backend

    def test_my_backend_contract(tmp_path):
        check_backend(MyBackend(), tmp_path)

Every check trains or prepares a tiny random Llama (:func:`tiny_causal_lm`, built in code) on
counting sequences (:func:`counting_records`), on CPU, in seconds. A failed check raises
``AssertionError`` saying which promise of :class:`adaptkit.plugins.contracts.Backend` broke.

Checked properties:
    * options — the backend declares ``options_schema`` (an object schema refusing unknown
      options), every numeric option has a lower and an upper bound and a valid default, and
      the trainer's option check refuses ``nan``, ``inf`` and out-of-range values for each;
    * prepare — the base is frozen, and ``prepare`` returns exactly the trainable parameters,
      which are the LoRA factors and nothing else (their size is ``Σ r·(in + out)`` over the
      extracted targets);
    * extract — the extracted adapter has one target per selected module, with the rank, scale
      and factor shapes that were asked for;
    * learns — a few optimizer steps through the shared trainer lower the loss;
    * reload — the extracted adapter, loaded with ``adaptkit.nn.load`` onto the base as the
      backend prepares it, reproduces the trained model's logits (which differ from the base's);
    * round trip — the adapter saves to the native format and loads back bit-identical;
    * resume — (if ``"resume" in backend.supports``) a run resumed from a checkpoint takes
      the same steps as an uninterrupted one;
    * ddp — (if ``"ddp" in backend.supports``) ``torchrun`` over 2 processes equals one process
      with the same global batch;
    * shard — (if ``"shard" in backend.supports``) the same with ``--shard``: FSDP2 over 2
      processes, the base and the factors sharded, equals one process.
      ``ddp`` and ``shard`` run subprocesses (one ``torchrun`` launch trains both), so the
      backend's class must be importable (``module.Class``) and constructible without arguments.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from adaptkit.nn.settings import LoraSettings
from adaptkit.training.settings import TrainConfig

#: Vocabulary of the kit's model: distinct from every layer width (16, 32, 64, 128).
VOCAB = 80


def tiny_causal_lm(seed: int = 0) -> Any:
    """A 2-layer Llama with random weights (hidden 64: bitsandbytes' CPU 4-bit kernels want
    widths divisible by the NF4 blocksize). The wide init gives the frozen output head enough
    range for an adapter to lower the loss far."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
        initializer_range=0.5,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def counting_records(n: int = 32, length: int = 24, seed: int = 0) -> list[list[int]]:
    """Sequences where the next token is this token + 1 (modulo 40), from random starts."""
    import torch

    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, 40, (n,), generator=g).tolist()
    return [[3 + (s + k) % 40 for k in range(length)] for s in starts]


def _config(backend: Any, **overrides: Any) -> TrainConfig:
    settings = dict(
        backend=backend.name,
        lora=LoraSettings(targets=["q_proj", "v_proj", "down_proj"], rank=4, alpha=12.0),
        lr=1e-2,
        max_steps=20,
        batch_size=8,
        seq_len=32,
        seed=0,
    )
    settings.update(overrides)
    return TrainConfig(**settings)


def _quiet(_msg: str) -> None:
    pass


def _factor_gap(x: Any, y: Any) -> float:
    """Largest ``max|X − Y| / max|Y|`` over both factors of every target of two adapters
    (relative to each tensor's scale: summation order changes the last bits, not the run)."""
    worst = 0.0
    for name, pair in y.targets.items():
        other = x.targets[name]
        for a, b in ((other.A, pair.A), (other.B, pair.B)):
            scale = max(float(b.abs().max()), 1e-12)
            worst = max(worst, float((a.float() - b.float()).abs().max()) / scale)
    return worst


def _train(backend: Any, cfg: TrainConfig, records: list[list[int]], model: Any = None) -> Any:
    from adaptkit.training.loop import run_training

    model = model if model is not None else tiny_causal_lm()
    result = run_training(cfg, model=model, records=records, backend=backend, progress=False, log=_quiet)
    return model, result


def _logits(model: Any) -> Any:
    import torch

    ids = torch.tensor(counting_records(n=2, length=12, seed=99))
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


_NUMERIC = ("number", "integer")


def check_options(backend: Any) -> None:
    from adaptkit.errors import AdaptkitError
    from adaptkit.training.options import backend_options

    name = getattr(backend, "name", repr(backend))
    schema = getattr(backend, "options_schema", None)
    assert isinstance(schema, dict) and schema.get("type") == "object", (
        f"{name}: declare options_schema, a JSON-Schema object of the backend's options "
        '({"type": "object", "additionalProperties": False, "properties": {}} for none)'
    )
    assert schema.get("additionalProperties") is False, (
        f"{name}: options_schema must set additionalProperties: false, so a misspelt option is refused"
    )
    for key, spec in (schema.get("properties") or {}).items():
        kind = spec.get("type")
        assert kind in (*_NUMERIC, "string", "boolean") or "enum" in spec, (
            f"{name}: option {key!r} needs a type (number, integer, string, boolean) or an enum"
        )
        if "default" in spec:
            try:
                backend_options(backend, {key: spec["default"]})
            except AdaptkitError as exc:
                raise AssertionError(f"{name}: option {key!r} has an invalid default: {exc}") from None
        if kind not in _NUMERIC:
            continue
        low = "minimum" in spec or "exclusiveMinimum" in spec
        high = "maximum" in spec or "exclusiveMaximum" in spec
        assert low and high, (
            f"{name}: numeric option {key!r} needs a lower and an upper bound (minimum/maximum): "
            "a finite but absurd value (1e308) must be refused before it reaches the optimizer"
        )
        for bad in ("nan", "inf", "-inf", 1e308, -1e308):
            try:
                backend_options(backend, {key: bad})
            except AdaptkitError:
                continue
            raise AssertionError(f"{name}: option {key}={bad!r} was accepted")


def check_prepare(backend: Any) -> None:
    model = tiny_causal_lm()
    cfg = _config(backend)
    originals = list(model.parameters())  # held, so no new parameter can reuse their ids
    before = {id(p) for p in originals}
    params = list(backend.prepare(model, cfg.lora, cfg, _quiet))
    assert params, f"{backend.name}: prepare returned no parameters"
    owned = {id(p): n for n, p in model.named_parameters()}
    strangers = [p for p in params if id(p) not in owned]
    assert not strangers, f"{backend.name}: prepare returned {len(strangers)} parameters the model lacks"
    assert all(p.requires_grad for p in params), f"{backend.name}: a returned parameter is frozen"
    returned = {id(p) for p in params}
    unreturned = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in returned]
    assert not unreturned, f"{backend.name}: trainable but not returned by prepare: {unreturned[:3]}"
    base = [owned[i] for i in returned & before]
    assert not base, f"{backend.name}: prepare left base parameters trainable: {base[:3]}"
    adapter = backend.extract(model, base_name=None, provenance={})
    factors = sum(p.rank * (p.in_features + p.out_features) for p in adapter.targets.values())
    total = sum(p.numel() for p in params)
    assert total == factors, (
        f"{backend.name}: prepare returned {total:,} trainable values, but the LoRA factors of the "
        f"extracted adapter hold {factors:,}: only LoRA parameters may train"
    )


def check_extract(backend: Any) -> None:
    from torch import nn

    model = tiny_causal_lm()
    reference = dict(tiny_causal_lm().named_modules())
    cfg = _config(backend, lora=LoraSettings(targets=["q_proj", "down_proj"], rank=3, alpha=7.5))
    backend.prepare(model, cfg.lora, cfg, _quiet)
    adapter = backend.extract(model, base_name=None, provenance={})
    expected = {n for n in reference if n.endswith((".q_proj", ".down_proj"))}
    got = set(adapter.targets)
    assert got == expected, (
        f"{backend.name}: extracted targets differ from the attached ones: "
        f"missing {sorted(expected - got)[:3]}, unexpected {sorted(got - expected)[:3]}"
    )
    for name, pair in adapter.targets.items():
        layer = reference[name]
        assert isinstance(layer, nn.Linear)
        assert pair.rank == 3, f"{backend.name}: {name} has rank {pair.rank}, attached with 3"
        assert abs(pair.scale - 7.5 / 3) <= 1e-6 * 2.5, (
            f"{backend.name}: {name} has scale {pair.scale:g}, attached with alpha/r = 2.5"
        )
        assert tuple(pair.A.shape) == (3, layer.in_features), f"{backend.name}: {name} A is {pair.A.shape}"
        assert tuple(pair.B.shape) == (layer.out_features, 3), f"{backend.name}: {name} B is {pair.B.shape}"


def check_learns(backend: Any, *, steps: int = 20, factor: float = 0.8) -> tuple[Any, Any]:
    """Train ``steps`` steps; the evaluation loss must fall below ``factor`` times its start.

    Returns:
        ``(trained model, TrainResult)``, reused by :func:`check_reload`.
    """
    import math

    model, result = _train(backend, _config(backend, max_steps=steps), counting_records())
    before, after = result.initial_loss, result.final_loss
    assert math.isfinite(after), f"{backend.name}: the loss became {after}"
    assert after < factor * before, (
        f"{backend.name}: {steps} steps took the loss from {before:.4f} only to {after:.4f} "
        f"(expected below {factor} x)"
    )
    return model, result


def check_reload(backend: Any, trained: tuple[Any, Any] | None = None, *, atol: float = 1e-4) -> None:
    import torch

    from adaptkit import nn as lora

    model, result = trained or _train(backend, _config(backend, max_steps=5), counting_records())
    want = _logits(model)
    base = _logits(tiny_causal_lm())
    moved = float((want - base).abs().max())
    assert moved > 1e-3, f"{backend.name}: training did not change the model's logits ({moved:.2g})"
    # The base as the backend prepares it (quantized, for a QLoRA-like backend), without LoRA.
    fresh = tiny_causal_lm()
    cfg = _config(backend)
    backend.prepare(fresh, cfg.lora, cfg, _quiet)
    lora.detach(fresh)
    lora.load(fresh, result.adapter)
    got = _logits(fresh)
    diff = float((got - want).abs().max())
    assert torch.isfinite(got).all() and diff <= atol, (
        f"{backend.name}: the extracted adapter, reloaded, differs from the trained model by "
        f"{diff:.3g} (max |Δlogit|, tolerance {atol:g})"
    )


def check_round_trip(backend: Any, tmp_path: Path) -> None:
    import torch

    from adaptkit.errors import AdaptkitError
    from adaptkit.io.native import load_adapter, save_adapter

    model = tiny_causal_lm()
    cfg = _config(backend)
    backend.prepare(model, cfg.lora, cfg, _quiet)
    adapter = backend.extract(model, base_name="tiny", provenance={"check": "round trip"})
    Path(tmp_path).mkdir(parents=True, exist_ok=True)
    path = Path(tmp_path) / f"{backend.name}-round-trip.safetensors"
    try:
        save_adapter(adapter, path, overwrite=True)
        back = load_adapter(path)
    except AdaptkitError as exc:
        raise AssertionError(f"{backend.name}: the extracted adapter does not save and load: {exc}") from exc
    assert set(back.targets) == set(adapter.targets), f"{backend.name}: targets changed in the native format"
    for name, pair in adapter.targets.items():
        other = back.targets[name]
        same = torch.equal(other.A, pair.A.cpu()) and torch.equal(other.B, pair.B.cpu())
        assert same, f"{backend.name}: {name} factors changed in the native format"
        assert (other.alpha, other.scaling) == (pair.alpha, pair.scaling), (
            f"{backend.name}: {name} scale changed in the native format"
        )


def check_resume(backend: Any, tmp_path: Path, *, rtol: float = 1e-5) -> None:
    if "resume" not in getattr(backend, "supports", ()):
        return
    records = counting_records(n=20)
    _, straight = _train(backend, _config(backend, max_steps=4), records)
    Path(tmp_path).mkdir(parents=True, exist_ok=True)
    out = Path(tmp_path) / f"{backend.name}-resume.safetensors"
    _train(backend, _config(backend, max_steps=4, save_every=2, output=str(out)), records)
    checkpoint = out.with_name(out.name + ".checkpoints") / "step-2"
    _, resumed = _train(backend, _config(backend, max_steps=4, resume=str(checkpoint)), records)
    for a, b in zip(resumed.losses, straight.losses[2:], strict=True):
        assert abs(a - b) <= rtol * abs(b), (
            f"{backend.name}: claims resume, but resumed losses {resumed.losses} differ from "
            f"{straight.losses[2:]}"
        )
    gap = _factor_gap(resumed.adapter, straight.adapter)
    assert gap <= 1e-5, f"{backend.name}: claims resume, but the factors end {gap:.3g} apart after resuming"


_DRIVER = """\
import importlib, json, sys
from adaptkit.training.loop import run_training
from adaptkit.nn.settings import LoraSettings
from adaptkit.training.settings import TrainConfig

module, _, qualname = sys.argv[1].partition(":")
backend = importlib.import_module(module)
for part in qualname.split("."):
    backend = getattr(backend, part)
for settings in json.loads(sys.argv[2]):  # one run after another in the same processes
    settings["lora"] = LoraSettings(**settings["lora"])
    run_training(TrainConfig(**settings), backend=backend(), progress=False, log=lambda m: None)
"""

#: The multi-process claims the kit knows, and the settings each adds to a run.
_MODES = {"ddp": {}, "shard": {"shard": True}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def check_ddp(backend: Any, tmp_path: Path, *, timeout: float = 300) -> None:
    """``torchrun`` over 2 processes (DDP) equals one process, if the backend claims ``ddp``."""
    check_processes(backend, tmp_path, modes=("ddp",), timeout=timeout)


def check_shard(backend: Any, tmp_path: Path, *, timeout: float = 300) -> None:
    """``torchrun`` over 2 processes with ``--shard`` (FSDP2) equals one process, if the backend
    claims ``shard``."""
    check_processes(backend, tmp_path, modes=("shard",), timeout=timeout)


def check_processes(
    backend: Any, tmp_path: Path, *, modes: tuple[str, ...] = ("ddp", "shard"), timeout: float = 300
) -> None:
    """Each claimed multi-process mode of ``modes`` against one process with the same global
    batch; all the modes train one after another in one ``torchrun`` launch."""
    claimed = [m for m in modes if m in getattr(backend, "supports", ())]
    if not claimed:
        return
    from adaptkit.io.native import load_adapter

    tmp = Path(tmp_path) / f"{backend.name}-{'-'.join(claimed)}"
    tmp.mkdir(parents=True, exist_ok=True)
    tiny_causal_lm().save_pretrained(tmp / "model", safe_serialization=True)
    data = tmp / "data.jsonl"
    data.write_text("".join(json.dumps({"input_ids": r}) + "\n" for r in counting_records(n=16)))
    (tmp / "driver.py").write_text(_DRIVER)
    cls = type(backend)
    target = f"{cls.__module__}:{cls.__qualname__}"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
    }

    def settings(batch: int, out: str, **extra: Any) -> dict[str, Any]:
        return {
            **extra,
            "backend": backend.name,
            "model": str(tmp / "model"),
            "data": str(data),
            "output": str(tmp / out),
            "lora": {"targets": ["q_proj", "v_proj", "down_proj"], "rank": 4, "alpha": 12.0},
            "lr": 1e-2,
            "max_steps": 3,
            "batch_size": batch,
            "seq_len": 32,
            "seed": 3,
        }

    several = [settings(2, f"{mode}.safetensors", **_MODES[mode]) for mode in claimed]
    runs = {
        "one": [sys.executable, str(tmp / "driver.py"), target, json.dumps([settings(4, "one.safetensors")])],
        "two": [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            str(_free_port()),
            str(tmp / "driver.py"),
            target,
            json.dumps(several),
        ],
    }
    for name, argv in runs.items():
        res = subprocess.run(
            argv, capture_output=True, text=True, env=env, timeout=timeout, stdin=subprocess.DEVNULL
        )
        assert res.returncode == 0, f"{backend.name}: the {name}-process run failed:\n" + textwrap.indent(
            res.stderr[-3000:], "  "
        )
    one = load_adapter(tmp / "one.safetensors")
    gaps = {mode: _factor_gap(load_adapter(tmp / f"{mode}.safetensors"), one) for mode in claimed}
    broken = [
        f"claims {mode}, but 2 processes end {gap:.3g} away from 1"
        for mode, gap in gaps.items()
        if gap > 1e-4
    ]
    assert not broken, f"{backend.name}: " + "; ".join(broken)


def check_backend(backend: Any, tmp_path: Path) -> None:
    """Run every contract check against ``backend`` (writes only under ``tmp_path``)."""
    for attr in ("name", "description", "prepare", "optimizer", "extract"):
        assert hasattr(backend, attr), f"backend {backend!r} lacks {attr!r}"
    unknown = set(getattr(backend, "supports", ())) - {"resume", *_MODES}
    assert not unknown, f"{backend.name}: unknown claims in supports: {sorted(unknown)}"
    check_options(backend)
    check_prepare(backend)
    check_extract(backend)
    trained = check_learns(backend)
    check_reload(backend, trained)
    check_round_trip(backend, tmp_path)
    check_resume(backend, tmp_path)
    check_processes(backend, tmp_path)
