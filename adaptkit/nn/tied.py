"""Tied weights: an output head stored only as the embeddings it shares.

Qwen2.5-0.5B and many small models tie ``lm_head.weight`` to ``model.embed_tokens.weight``
(``tie_word_embeddings: true``) and store the embeddings alone. An adapter that changes one side
and not the other computes, unmerged, a head that is no longer the embeddings:

* a saved ``lm_head`` (``modules_to_save``) or a LoRA on ``lm_head``: head ``H' = H_saved`` or
  ``E + ΔW``, embeddings ``E`` unchanged;
* a saved ``embed_tokens`` or an embedding LoRA: embeddings ``E' = E_saved`` or ``E + ΔE``, head
  ``E`` unchanged (PEFT wraps the embedding layer only; the head keeps the base tensor).

PEFT's own ``merge_and_unload`` adds a head or embedding update to the shared tensor, so both
sides change. Baking writes what the adapter computes instead: the head as a tensor of its own,
the embeddings as the adapter makes them, and ``tie_word_embeddings: false`` in ``config.json``
so the model class no longer ties them. Trainable tokens are the exception PEFT makes itself:
their rows replace the embeddings' and, on a tied model, the head's, so they keep the tie.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: The ``config.json`` key that ties the head to the embeddings (top level, and in a VLM's
#: ``text_config``).
TIE_KEY = "tie_word_embeddings"


def tied_missing(model: Any, tensors: dict[str, Any], skeleton: Any) -> dict[str, str]:
    """``module parameter -> checkpoint tensor`` of each weight the model ties to another and the
    checkpoint leaves out (``lm_head.weight -> model.embed_tokens.weight``).

    Args:
        model: The model class built on the meta device (``None``: unknown, nothing tied).
        tensors: The checkpoint's tensor names (values unused).
        skeleton: Its :class:`~adaptkit.nn.placement.ModelSkeleton` (names mapped as loading does).
    """
    pairs = getattr(model, "all_tied_weights_keys", None) or {}
    if skeleton is None or not isinstance(pairs, dict):
        return {}
    stored: dict[str, str] = {}
    for name in sorted(tensors):
        stored.setdefault(skeleton.canonical(name), name)
    return {head: stored[source] for head, source in pairs.items() if head not in stored and source in stored}


def tied_stored(model: Any, tensors: dict[str, Any], skeleton: Any) -> dict[str, str]:
    """``checkpoint tensor -> checkpoint tensor`` of tied pairs the checkpoint stores both sides
    of (some do, though the model class ties them when it loads): changing one side alone must
    untie the config too, or loading would tie the change away."""
    pairs = getattr(model, "all_tied_weights_keys", None) or {}
    if skeleton is None or not isinstance(pairs, dict):
        return {}
    stored: dict[str, str] = {}
    for name in sorted(tensors):
        stored.setdefault(skeleton.canonical(name), name)
    return {stored[h]: stored[s] for h, s in pairs.items() if h in stored and s in stored}


def untie_config(out: Path) -> None:
    """Set ``tie_word_embeddings: false`` in ``out/config.json`` (and in its ``text_config``,
    where a VLM keeps the flag), so the head written beside the embeddings is loaded as is."""
    from adaptkit.io.jsonio import read_json_file
    from adaptkit.io.model_config import MAX_CONFIG_BYTES

    path = out / "config.json"
    config = read_json_file(path, what="config.json", max_bytes=MAX_CONFIG_BYTES)
    config[TIE_KEY] = False
    text = config.get("text_config")
    if isinstance(text, dict) and TIE_KEY in text:
        text[TIE_KEY] = False
    path.write_text(json.dumps(config, indent=2) + "\n")


def index_new_tensors(out: Path, added: dict[str, str]) -> None:
    """Record ``tensor name -> file name`` in ``out``'s shard index, where the model has one."""
    from adaptkit.io.jsonio import read_json_file
    from adaptkit.io.model_config import MAX_CONFIG_BYTES

    path = out / "model.safetensors.index.json"
    if not added or not path.is_file():
        return
    index = read_json_file(path, what=path.name, max_bytes=MAX_CONFIG_BYTES)
    index.setdefault("weight_map", {}).update(added)
    path.write_text(json.dumps(index, indent=2) + "\n")
