"""``adaptkit generate`` for a MODEL no runtime plugin accepts: a Hugging Face model in PyTorch.

The ``-a`` SPECs are loaded as the export host loads them (a recipe combined as ``adaptkit
combine`` would) and attached unmerged: this is the reference every export is checked against,
so ``adaptkit generate ./base -a a.yaml`` shows what an export of ``a.yaml`` should say.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from adaptkit.errors import AdaptkitError
from adaptkit.plugins.records import GenerateRequest


def generate_torch(request: GenerateRequest, emit: Callable[[str], None]) -> dict[str, Any]:
    """Decode ``request`` in PyTorch (see the module docstring); ``emit`` gets text as it comes."""
    from adaptkit import nn as lora
    from adaptkit.exporting import combined, load_export_adapters
    from adaptkit.io.models import load_causal_lm
    from adaptkit.nn.decode import eos_ids, torch_greedy, torch_sample

    if request.adapter_name is not None:
        request.refuse("--adapter-name", "picks an adapter of a --lora-inputs export")
    adapter = combined(load_export_adapters(list(request.adapters))) if request.adapters else None
    ids = list(request.input_ids) if request.input_ids is not None else None
    # --input-ids: the tokenizer is not loaded, as for an export (ids are printed).
    device = "cuda" if request.device == "cuda" else None
    net, tokenizer = load_causal_lm(request.model, dtype="fp32", device=device, tokenizer=ids is None)
    if adapter is not None:
        lora.load(net, adapter, dtype="fp32")
    if ids is None:
        if tokenizer is None:
            raise AdaptkitError(
                f"{request.model} has no tokenizer; give the prompt as --input-ids", key="--prompt"
            )
        ids = [int(t) for t in tokenizer(request.prompt)["input_ids"]]
    vocab = net.get_input_embeddings().num_embeddings
    request.check_ids(ids, vocab, getattr(net.config, "max_position_embeddings", None))
    eos = eos_ids(net.config)
    shown = ""
    sofar: list[int] = []

    def on_token(token: int) -> None:
        nonlocal shown
        if tokenizer is None:
            emit(f"{token} ")
            return
        sofar.append(token)
        text = tokenizer.decode(sofar, skip_special_tokens=True)
        if text.startswith(shown):  # print what is new (a multi-byte character may lag a token)
            emit(text[len(shown) :])
            shown = text

    start = time.perf_counter()
    if request.greedy:
        tokens, _ = torch_greedy(net, ids, request.max_new_tokens, eos, on_token=on_token)
    else:
        tokens = torch_sample(
            net,
            ids,
            request.max_new_tokens,
            eos,
            temperature=request.temperature,
            top_p=request.top_p,
            seed=request.seed,
            on_token=on_token,
        )
    seconds = time.perf_counter() - start
    text = tokenizer.decode(tokens, skip_special_tokens=True) if tokenizer is not None else None
    return {"input_ids": ids, "output_ids": tokens, "text": text, "tokens_per_s": len(tokens) / seconds}
