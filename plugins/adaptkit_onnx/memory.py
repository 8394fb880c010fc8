"""Memory between an export's phases: each phase (the streamed bake, the builder child, the
PyTorch reference, the ONNX Runtime session) should find the previous one's memory returned."""

from __future__ import annotations


def release_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc's ``malloc_trim``).

    The streamed bake and the PyTorch reference free hundreds of MiB in blocks glibc keeps for
    reuse; the builder child and the ONNX Runtime session that follow would be counted on top.
    """
    import gc

    from adaptkit.api.models import release_heap

    gc.collect()
    release_heap()
