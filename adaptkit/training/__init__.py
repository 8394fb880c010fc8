"""Backend-agnostic training: data, the loop, checkpoints, distributed runs.

Backends (``register_backends``) decide how LoRA is attached (16-bit, NF4 4-bit, ...) and
which optimizer to use; everything else — batching, the causal-LM loss, progress, metrics,
checkpoints that resume exactly, DDP under ``torchrun`` — lives here and is shared.
"""
