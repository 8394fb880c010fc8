"""Base models for plugins: folders and Hub ids vetted before anything loads, never remote code.

:func:`resolve_model` turns a folder or Hub id into a checked local folder (every file inside
it, weights matching the config, no ``auto_map`` code); :func:`load_causal_lm` and
:func:`load_tokenizer` load from it with ``trust_remote_code`` off; :func:`load_streamed` fills a
model one checkpoint tensor at a time (peak: the model plus one tensor);
:func:`plan_streamed_load` and :func:`load_streamed_plan` split that in two, for a loader that
places each tensor itself (the QLoRA backend quantizes as it loads).
"""

from __future__ import annotations

from adaptkit.io.models import (
    load_causal_lm,
    load_config,
    load_tokenizer,
    resolve_model,
    side_file,
)
from adaptkit.nn.placement import meta_model
from adaptkit.nn.streamed_load import load as load_streamed_plan
from adaptkit.nn.streamed_load import load_streamed, release_heap
from adaptkit.nn.streamed_load import plan as plan_streamed_load

__all__ = [
    "load_causal_lm",
    "load_config",
    "load_streamed",
    "load_streamed_plan",
    "load_tokenizer",
    "meta_model",
    "plan_streamed_load",
    "release_heap",
    "resolve_model",
    "side_file",
]
