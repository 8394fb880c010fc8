"""Tiny Hugging Face models built in code (random weights, seeded, no downloads)."""

from __future__ import annotations

import torch

#: The suite's tiny Llama: 2 layers, hidden 32, 4 heads (2 KV, head size 8), vocabulary 128, an
#: untied output head.
LLAMA = dict(
    vocab_size=128, hidden_size=32, intermediate_size=64, max_position_embeddings=64,
    num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
)  # fmt: skip

#: What the generation-graph tests change: head size 16 (ONNX Runtime's attention kernel wants a
#: multiple of 16), a context of 128, no special tokens (a token-id model never stops early).
GENERATION = dict(
    hidden_size=64, intermediate_size=96, vocab_size=160, max_position_embeddings=128,
    bos_token_id=None, eos_token_id=None, pad_token_id=None,
)  # fmt: skip


def tiny_llama(seed: int = 0, cls=None, **overrides):
    """The tiny Llama (``LLAMA`` with ``overrides``) as ``cls`` (default ``LlamaForCausalLM``)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**{**LLAMA, **overrides})
    torch.manual_seed(seed)
    return (cls or LlamaForCausalLM)(config).eval()


def causal_lm(arch: str, seed: int = 0, **overrides):
    """A small random Llama, Mistral, Qwen2, Qwen3, Phi-3, Gemma or Gemma 3 (``GENERATION``)."""
    import transformers as tf

    config_cls, model_cls = {
        "llama": (tf.LlamaConfig, tf.LlamaForCausalLM),
        "mistral": (tf.MistralConfig, tf.MistralForCausalLM),
        "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM),
        "phi3": (tf.Phi3Config, tf.Phi3ForCausalLM),
        "qwen3": (tf.Qwen3Config, tf.Qwen3ForCausalLM),
        "gemma": (tf.GemmaConfig, tf.GemmaForCausalLM),
        "gemma3_text": (tf.Gemma3TextConfig, tf.Gemma3ForCausalLM),
    }[arch]
    settings = {**LLAMA, **GENERATION, **overrides}
    if arch == "phi3":
        settings.update(original_max_position_embeddings=128, num_key_value_heads=4)
    if arch.startswith("gemma"):
        # Gemma ties its head and scales queries by query_pre_attn_scalar^-1/2 (Gemma 3), which
        # llama.cpp takes to be the head size below 27B.
        settings.update(head_dim=16, tie_word_embeddings=True)
        if arch == "gemma3_text":
            settings.update(query_pre_attn_scalar=16, sliding_window=64)
    torch.manual_seed(seed)
    return model_cls(config_cls(**settings)).eval()


def tiny_gpt2(seed: int = 0):
    """A tiny GPT-2: its projections are ``Conv1D`` (weights stored in×out)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=128, n_embd=32, n_layer=2, n_head=4, n_positions=64)
    return GPT2LMHeadModel(cfg).eval()


def tokens(seed: int = 0, batch: int = 2, length: int = 12, vocab: int = 128):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, length), generator=g)
