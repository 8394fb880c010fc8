"""Base GGUF files for the llama.cpp checks, written from a Hugging Face folder with ``gguf``.

Why not llama.cpp's own ``convert_hf_to_gguf.py``: it is not in the llama-cpp-python wheel, only
in its source distribution, which a test run would have to download; and for a byte-level test
vocabulary it wants a tokenizer whose pre-tokenizer hash it knows. This writer uses the same
``gguf`` package and its tensor-name map, and reproduces the converter's documented layout
choices for the verified architectures:

* Llama and Mistral: rows of ``q_proj``/``k_proj`` reordered per head from halves to adjacent
  pairs (llama.cpp's rotary order);
* Gemma: RMSNorm weights stored as ``1 + w`` (Hugging Face's Gemma norm multiplies by ``1 + w``);
  a tied head is not written (llama.cpp reuses the embeddings);
* Phi-3: the fused ``qkv_proj`` and ``gate_up_proj`` as they are.

It is an independent check, not a shared assumption: the tests compare llama.cpp running this
base (with and without adapters) against PyTorch, so a wrong layout here fails the base-only
comparison before any adapter is involved.

The vocabulary is a SentencePiece-style one (``tokenizer.ggml.model = llama``): ``<unk>``,
``<s>``, ``</s>``, the 256 byte tokens, then filler pieces up to the model's vocabulary size.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

#: ``model_type`` -> (gguf arch, rotary rows reordered, norms stored as 1 + w).
LAYOUT = {
    "llama": ("LLAMA", True, False),
    "mistral": ("LLAMA", True, False),
    "qwen2": ("QWEN2", False, False),
    "qwen3": ("QWEN3", False, False),
    "phi3": ("PHI3", False, False),
    "gemma": ("GEMMA", False, True),
    "gemma3_text": ("GEMMA3", False, True),
}
#: Byte tokens start here (after <unk>, <s>, </s>).
FIRST_BYTE = 3
MIN_VOCAB = FIRST_BYTE + 256


def write_base_gguf(model_dir: Path, out: Path, dtype: str = "f32") -> Path:
    """Write the Hugging Face model in ``model_dir`` as a base GGUF at ``out`` (f32 or f16)."""
    import gguf
    from safetensors import safe_open

    config = json.loads((Path(model_dir) / "config.json").read_text())
    model_type = config["model_type"]
    arch_name, rotary_pairs, norm_plus_one = LAYOUT[model_type]
    arch = gguf.MODEL_ARCH[arch_name]
    n_layers = config["num_hidden_layers"]
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    hidden = config["hidden_size"]
    head_dim = config.get("head_dim") or hidden // heads
    vocab = config["vocab_size"]
    if vocab < MIN_VOCAB:
        raise ValueError(f"vocab_size {vocab}: the byte vocabulary needs at least {MIN_VOCAB}")
    tied = config.get("tie_word_embeddings", model_type.startswith("gemma"))

    w = gguf.GGUFWriter(str(out), arch=gguf.MODEL_ARCH_NAMES[arch])
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name("adaptkit test base")  # not the arch: llama.cpp keys token rules on names
    w.add_context_length(config["max_position_embeddings"])
    w.add_embedding_length(hidden)
    w.add_block_count(n_layers)
    w.add_feed_forward_length(config["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_dimension_count(int(head_dim * config.get("partial_rotary_factor", 1.0)))
    w.add_layer_norm_rms_eps(config.get("rms_norm_eps", 1e-6))
    w.add_rope_freq_base(_rope_theta(config))
    w.add_file_type(gguf.LlamaFileType.ALL_F32 if dtype == "f32" else gguf.LlamaFileType.MOSTLY_F16)
    if model_type == "gemma3_text":
        w.add_sliding_window(config["sliding_window"])
        w.add_rope_freq_base_swa(config.get("rope_local_base_freq", 10000.0))
    _add_vocab(w, gguf, vocab)

    names = gguf.get_tensor_name_map(arch, n_layers)
    files = sorted(Path(model_dir).glob("*.safetensors"))
    for file in files:
        with safe_open(str(file), "pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open has keys(), not iteration)
                if key == "lm_head.weight" and tied:
                    continue
                tensor = f.get_tensor(key).to(torch.float32)
                stem, suffix = key.rsplit(".", 1)
                name = names.get_name(stem)
                if name is None:
                    raise ValueError(f"{key}: no GGUF name for {model_type}")
                leaf = stem.rsplit(".", 1)[-1]
                if rotary_pairs and leaf in ("q_proj", "k_proj"):
                    n = heads if leaf == "q_proj" else kv_heads
                    tensor = _pairs(tensor, n)
                if norm_plus_one and key.endswith("norm.weight"):
                    tensor = tensor + 1
                array = tensor.numpy()
                # llama.cpp keeps norms and biases in f32 whatever the file type.
                if dtype == "f16" and tensor.ndim == 2:
                    array = array.astype(np.float16)
                w.add_tensor(f"{name}.{suffix}", array)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


def _rope_theta(config: dict) -> float:
    params = config.get("rope_parameters") or {}
    if "rope_theta" in params:
        return float(params["rope_theta"])
    if isinstance(params.get("full_attention"), dict):
        return float(params["full_attention"]["rope_theta"])
    return float(config.get("rope_theta", 10000.0))


def _pairs(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Rows of each head reordered from halves ``[x0..x(d/2-1), y0..]`` to pairs ``[x0, y0, ...]``."""
    rows = weight.shape[0]
    return (
        weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)
    )


def _add_vocab(w, gguf, vocab: int) -> None:
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    tokens += [f"▁t{i}" for i in range(vocab - len(tokens))]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    types += [gguf.TokenType.BYTE] * 256 + [gguf.TokenType.NORMAL] * (vocab - MIN_VOCAB)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * vocab)
    w.add_token_types(types)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(False)
    w.add_add_space_prefix(False)
