"""Tiny, deterministic building blocks: a byte-level tokenizer and small Llama configs.

Used by the built-in demo model and by tests; nothing is downloaded.
"""

from __future__ import annotations

from typing import Any

SPECIAL = ("<pad>", "<s>", "</s>")


def byte_tokenizer() -> Any:
    """A byte-level tokenizer: ids 0–2 are ``<pad>``, ``<s>``, ``</s>``; id ``3 + b`` is byte ``b``.

    Every UTF-8 string round-trips exactly; no merges, so one byte is one token.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    by_byte = _byte_level_chars()
    assert set(by_byte.values()) == set(pre_tokenizers.ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate(SPECIAL)}
    vocab.update({by_byte[b]: len(SPECIAL) + b for b in range(256)})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None, fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        clean_up_tokenization_spaces=False,
    )


def _byte_level_chars() -> dict[int, str]:
    """The byte -> printable character map of byte-level pre-tokenisation: printable Latin-1
    bytes stand for themselves, the other 68 bytes take code points 256, 257, ... in order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    out, extra = {}, 0
    for b in range(256):
        if b in printable:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return out
