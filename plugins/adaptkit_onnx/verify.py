"""Parity and latency checks of an exported graph against PyTorch."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch


def providers() -> list[str]:
    """CUDA when a GPU is really usable (onnxruntime-gpu lists it regardless), else CPU."""
    import onnxruntime as ort

    if torch.cuda.is_available() and "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def session(path: Path) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    # Idle ORT threads spin by default; with several sessions alive (merged, base) the
    # spinning ones steal cores from the one being timed.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=opts, providers=providers())


def probes(vocab: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Two input shapes; the second batch has a right-padded row."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(0, vocab, (1, 7), generator=g)
    b = torch.randint(0, vocab, (3, 16), generator=g)
    mask_b = torch.ones_like(b)
    mask_b[1, 11:] = 0
    return [(a, torch.ones_like(a)), (b, mask_b)]


def torch_logits(model: Any, ids: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float().numpy()


def ort_logits(sess: Any, ids: torch.Tensor, mask: torch.Tensor, run_options: Any = None) -> np.ndarray:
    feed = {
        "input_ids": ids.numpy().astype(np.int64),
        "attention_mask": mask.numpy().astype(np.int64),
    }
    return np.asarray(sess.run(["logits"], feed, run_options)[0], dtype=np.float32)


def compare(got: np.ndarray, ref: np.ndarray, mask: torch.Tensor) -> dict[str, float]:
    """Max absolute and relative error over real (unpadded) positions."""
    valid = mask.numpy().astype(bool)
    diff = np.abs(got - ref)[valid]
    scale = float(np.abs(ref[valid]).max()) or 1.0
    return {"max_abs": float(diff.max()), "max_rel": float(diff.max()) / scale}


def median_latencies(
    fns: dict[str, Callable[[], Any]], *, budget_s: float = 1.5, warmup: int = 3
) -> dict[str, float]:
    """Median seconds per call of each function, calls interleaved round-robin so drift in
    machine load affects all of them alike; as many rounds as fit in ``budget_s`` (30–500)."""
    start = time.perf_counter()
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    per_round = (time.perf_counter() - start) / warmup
    repeat = max(30, min(500, int(budget_s / max(per_round, 1e-6))))
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}
