"""Run ONNX Runtime GenAI's model builder on one checkpoint folder (a child process)::

    python -m adaptkit_onnx.generation.builder_worker SRC OUT PRECISION DEVICE CACHE
           [--separate-projections]

The builder is the field's way to a generation-ready graph (KV cache, fused
GroupQueryAttention, ``MatMulNBits`` for int4); writing our own would duplicate thousands of
lines per architecture. It runs in a child process so its peak memory is its own and is gone
when it returns. Three adjustments, each for a reason the parity check would otherwise only
catch after the fact:

- **LM head by identity.** The builder takes any ``nn.Linear`` whose ``out_features`` equals
  the vocabulary size for the LM head, so a model whose vocabulary equals a layer width gets
  its logits wired to that layer. Here the LM head is the module the model itself reports as
  its output embeddings, and nothing else.
- **No tokenizer needed.** The builder reads the tokenizer to find special tokens and copies
  it; a base trained on token ids has none. Without one the config alone is used and no
  tokenizer files are written.
- **No end-of-sequence token needed.** A config without ``eos_token_id`` gets a placeholder
  here (the builder insists on one) that the exporter replaces with ``[]`` — "never stop
  early" — in ``genai_config.json``.

Nothing from the model folder runs: every ``from_pretrained`` here and in the builder is
local with ``trust_remote_code=False``, and transformers cannot import an ``auto_map``
module in this process at all (:func:`forbid_remote_code`).

``--separate-projections`` keeps q/k/v as separate MatMuls (no QKV fusion), so LoRA branches
can be attached per projection (``--lora-inputs``).
"""

from __future__ import annotations

import sys
from pathlib import Path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json")


def main(argv: list[str]) -> int:
    src, out, precision, device, cache = argv[:5]
    rest = argv[5:]
    options = ["disable_qkv_fusion=true"] if "--separate-projections" in rest else []
    # int4 settings from the parent: "--option block_size=32" (only these two keys).
    for i, arg in enumerate(rest[:-1]):
        if arg == "--option" and rest[i + 1].split("=")[0] in ("block_size", "accuracy_level"):
            options.append(rest[i + 1])

    import importlib

    forbid_remote_code()
    import onnxruntime_genai.models.builder as builder  # puts the builder's folder on sys.path
    from transformers import AutoConfig, AutoTokenizer

    # The module object the builder's classes come from (imported as top-level ``builders``).
    builder_base = importlib.import_module("builders.base")

    # Decided by files: some tokenizer classes construct themselves from nothing, and an empty
    # tokenizer written into the export would be an invention.
    has_tokenizer = any((Path(src) / name).is_file() for name in TOKENIZER_FILES)

    def hf_details(model_name, input_path, cache_dir, extra_options):
        local = {"local_files_only": True, "trust_remote_code": False}
        config = AutoConfig.from_pretrained(input_path, **local)
        tokenizer = AutoTokenizer.from_pretrained(input_path, **local) if has_tokenizer else None
        if tokenizer is not None:
            builder.add_special_token_ids(config, tokenizer)
        if config.eos_token_id is None:
            config.eos_token_id = 0  # placeholder, replaced by [] in genai_config.json
        return {"extra_kwargs": {}, "hf_name": input_path, "hf_config": config}

    def has_lm_head(self, module):
        weights = self.weights
        if hasattr(weights, "get_output_embeddings"):
            return module is weights.get_output_embeddings()
        return original_has_lm_head(self, module)

    original_save = builder_base.Model.save_processing

    def save_processing(self, model_name_or_path, extra_kwargs, out_dir):
        if has_tokenizer:
            original_save(self, model_name_or_path, extra_kwargs, out_dir)

    original_has_lm_head = builder_base.Model.has_lm_head
    builder.get_hf_details = hf_details
    builder_base.Model.has_lm_head = has_lm_head
    builder_base.Model.save_processing = save_processing

    kwargs = builder.parse_extra_options(None, src, out, precision, device, cache, options)
    kwargs["hf_remote"] = False  # the builder's own from_pretrained calls: never trust remote code
    builder.create_model(None, src, out, precision, device, cache, **kwargs)
    print_peak()
    return 0


#: The line that tells the parent this process's peak RSS (its log is our stdout).
PEAK_LINE = "adaptkit-builder-peak-kib"


def print_peak() -> None:
    """Print this process's own peak RSS (``VmHWM``, KiB), where Linux keeps it. The parent's
    ``RUSAGE_CHILDREN`` figure would include the parent's own RSS at fork, inherited by the
    child's ``ru_maxrss``."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            hwm = next((line.split()[1] for line in status if line.startswith("VmHWM:")), None)
    except OSError:
        return
    if hwm is not None:
        print(f"{PEAK_LINE} {hwm}", flush=True)


def forbid_remote_code() -> None:
    """Make transformers unable to import a model's own code in this process, whatever a
    caller passes as ``trust_remote_code``: the function that imports an ``auto_map`` module
    refuses instead. Patched before the builder and transformers' auto classes import it by
    name (those imported earlier are patched where they hold it)."""
    import transformers.dynamic_module_utils as dynamic

    def refuse(class_reference, *args, **kwargs):
        raise ValueError(f"{class_reference} is the model's own code, which adaptkit never runs")

    dynamic.get_class_from_dynamic_module = refuse
    for module in list(sys.modules.values()):
        if getattr(module, "get_class_from_dynamic_module", None) is not None and module is not dynamic:
            module.get_class_from_dynamic_module = refuse

    # The builder loads the weights with AutoModelForCausalLM and no use_safetensors: a
    # folder with a pickled pytorch_model.bin beside incomplete safetensors must not reach it.
    from transformers.models.auto import auto_factory

    load = auto_factory._BaseAutoModelClass.from_pretrained.__func__

    def local_safetensors_only(cls, *args, **kwargs):
        kwargs.update(trust_remote_code=False, local_files_only=True, use_safetensors=True)
        return load(cls, *args, **kwargs)

    auto_factory._BaseAutoModelClass.from_pretrained = classmethod(local_safetensors_only)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
