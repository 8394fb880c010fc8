"""Shared helpers for the benchmark scripts: timing, peak memory, machine description."""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any


def best_time(fn: Callable[[], Any], *, repeat: int = 3, warmup: int = 1) -> float:
    """Minimum wall time of ``fn()`` over ``repeat`` runs (after ``warmup`` runs)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        gc.collect()
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


@dataclass
class Peak:
    bytes: int = 0


def release_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc), so RSS measured
    afterwards starts from what is really in use."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


@contextmanager
def peak_rss():
    """Sample this process's RSS every millisecond; ``.bytes`` is the peak above the start."""
    import psutil

    proc = psutil.Process()
    release_memory()
    start = proc.memory_info().rss
    peak = Peak()
    stop = threading.Event()

    def sample() -> None:
        top = start
        while not stop.is_set():
            top = max(top, proc.memory_info().rss)
            time.sleep(0.001)
        peak.bytes = max(0, top - start)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        stop.set()
        thread.join()


def machine() -> dict[str, Any]:
    import torch

    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
    }


def versions(*dists: str) -> dict[str, str]:
    import importlib.metadata

    out = {}
    for d in dists:
        try:
            out[d] = importlib.metadata.version(d)
        except importlib.metadata.PackageNotFoundError:
            out[d] = "not installed"
    return out


def parser(doc: str, quick_help: str | None = None) -> argparse.ArgumentParser:
    """A benchmark's command line: ``--quick`` (small sizes) and ``--json FILE``."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help=quick_help)
    ap.add_argument("--json", help="also write the results to this file")
    return ap


def run_info(quick: bool, *dists: str) -> dict[str, Any]:
    """What every result opens with: the mode, the machine, the versions of ``dists``."""
    return {"mode": "quick" if quick else "full", "machine": machine(), "versions": versions(*dists)}


def emit(name: str, results: dict[str, Any], path: str | None) -> None:
    """Print ``results`` as JSON and, if ``path`` is given, write them there."""
    import datetime

    stamp = datetime.date.today().isoformat()
    text = json.dumps({"benchmark": name, "date": stamp, **results}, indent=2, default=str)
    print(text)
    if path:
        with open(path, "w") as fh:
            fh.write(text + "\n")


def mib(n: int) -> float:
    return n / (1 << 20)
