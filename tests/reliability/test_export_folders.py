"""A downloaded export folder is untrusted input to ``adaptkit generate``.

One small ``--lora-inputs`` export (a random Llama with a byte-level BPE tokenizer the runtime
reads, one adapter) is built once; each hostile variant is a copy of it with one file edited.
A second export, of the same model with a WordLevel tokenizer, checks that an export drops a
tokenizer ONNX Runtime GenAI cannot read.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.helpers.adapters import peft_adapter
from tests.helpers.models import causal_lm

VOCAB = 272  # the 256 byte symbols, 5 merges, an end-of-text token and room to spare


def _byte_level_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(alphabet)}
    merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("l", "l"), ("o", "r")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")


def _word_level_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {chr(97 + i): i for i in range(26)} | {"[UNK]": 26}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")


def _export(*args) -> str:
    """Run ``adaptkit export`` in-process; returns its stderr (it must succeed)."""
    from adaptkit.cli import main

    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    assert code == 0, err.getvalue()
    return err.getvalue()


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export-folders")
    base = causal_lm("llama", seed=5, vocab_size=VOCAB)
    base.save_pretrained(tmp / "model")
    _byte_level_tokenizer().save_pretrained(tmp / "model")
    adapter = peft_adapter(base, tmp / "skill", 1, ["q_proj", "v_proj"], r=2, b_scale=0.3)
    good = tmp / "good"
    _export("export", "--onnx", "--lora-inputs", "--model", tmp / "model", "-a", adapter, "-o", good)
    shutil.copytree(tmp / "model", tmp / "wl-model")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp / "wl-model" / name).unlink()
    _word_level_tokenizer().save_pretrained(tmp / "wl-model")
    word_level = tmp / "word-level"
    warning = _export(
        "export", "--onnx", "--no-verify", "--model", tmp / "wl-model", "-a", adapter, "-o", word_level
    )
    return {"good": good, "word_level": word_level, "word_level_stderr": warning}


@pytest.fixture
def copy(exports, tmp_path):
    """A fresh copy of the good export, to make hostile."""
    out = tmp_path / "export"
    shutil.copytree(exports["good"], out)
    return out


def _edit_json(path, edit):
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))


def _refused(run_cli, folder, *extra, words=(), args=("--input-ids", "1,2,3")):
    """``generate`` refuses with one error line holding every one of ``words``; nothing is
    written anywhere in the folder."""
    before = sorted(p.name for p in folder.iterdir())
    code, _, err = run_cli("generate", folder, *args, "--max-new-tokens", "4", *extra)
    errors = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err[-2000:]
    for word in words:
        assert word in errors[0], errors[0]
    assert sorted(p.name for p in folder.iterdir()) == before
    return errors[0]


def _generated(run_cli, folder, *extra, args=("--input-ids", "1,2,3")):
    code, out, err = run_cli("generate", folder, *args, "--max-new-tokens", "4", "--json", *extra)
    assert code == 0, err
    return json.loads(out), err


# -- 1. nothing runs, nothing is written outside -----------------------------------------------


@pytest.fixture
def canary_library(tmp_path):
    """A shared library whose constructor writes a canary file, and that canary's path."""
    from tests.helpers.files import canary_library as build

    lib, canary = tmp_path / "libcanary.so", tmp_path / "CANARY"
    return lib, canary, build(lib, canary)


def test_custom_ops_library_in_the_folder_never_loads(run_cli, copy, canary_library):
    lib, canary, real = canary_library
    if real:  # the canary works: loading the library does write it
        probe = f"import ctypes; ctypes.CDLL({str(lib)!r})"
        subprocess.run([sys.executable, "-c", probe], check=True)
        assert canary.exists()
        canary.unlink()
    shutil.copy(lib, copy / "libcanary.so")
    _edit_json(
        copy / "genai_config.json",
        lambda d: d["model"]["decoder"]["session_options"].update(custom_ops_library="libcanary.so"),
    )
    for args in (("--input-ids", "1,2,3"), ("--prompt", "the")):
        line = _refused(run_cli, copy, args=args, words=("genai_config.json",))
        assert "model.decoder.session_options.custom_ops_library" in line
    _refused(run_cli, copy, "--adapter-name", "skill", words=("custom_ops_library",))
    assert not canary.exists()


def test_profiling_prefix_outside_the_folder_writes_nothing(run_cli, copy, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    _edit_json(
        copy / "genai_config.json",
        lambda d: d["model"]["decoder"]["session_options"].update(enable_profiling=str(outside / "prof")),
    )
    _refused(run_cli, copy, words=("genai_config.json", "model.decoder.session_options.enable_profiling"))
    assert list(outside.iterdir()) == []


def _set(path, value):
    """An edit of the parsed config that sets dotted ``path`` to ``value``."""

    def edit(doc):
        *parents, last = path.split(".")
        for key in parents:
            doc = doc.setdefault(key, {})
        doc[last] = value

    return edit


@pytest.mark.parametrize(
    ("key", "value"),
    [
        # options the runtime has and adaptkit never writes: refused by the allow list
        ("model.decoder.session_options.intra_op_num_threads", 1),
        ("model.decoder.session_options.log_severity_level", 0),
        ("model.decoder.session_options.provider_options", [{"cuda": {"gpu_external_alloc": "4096"}}]),
        ("model.decoder.session_options.provider_options", [{"tensorrt": {}}]),
        ("model.decoder.session_options.provider_options", [{"cuda": {}}, {"cuda": {}}]),
        ("model.decoder.session_options.log_id", "x/../../y"),
        ("model.vision", {"filename": "vision.onnx"}),
        ("model.embedding", {"filename": "embed.onnx"}),
        ("model.speech", {"filename": "/etc/passwd"}),
        ("engine", {"dynamic_batching": {}}),
        ("model.decoder.pipeline", []),
        ("model.type", "whisper"),
        ("search.num_beams", 4),
        # files named elsewhere than a plain name in the folder
        ("model.decoder.filename", "../model.onnx"),
        ("model.decoder.filename", "/etc/passwd"),
        ("model.decoder.filename", "sub/model.onnx"),
        ("model.decoder.filename", 7),
        # values of the wrong type or out of range
        ("model.context_length", "abc"),
        ("model.context_length", 0),
        ("model.context_length", -5),
        ("model.context_length", 10**30),
        ("model.context_length", 12.5),
        ("model.vocab_size", [1]),
        ("model.vocab_size", True),
        ("model.vocab_size", VOCAB + 1),  # larger than the graph's logits
        ("model.vocab_size", VOCAB - 1),  # smaller than the graph's logits
        ("model.decoder.num_hidden_layers", 1 << 40),
        ("model.decoder.head_size", None),
        ("model.eos_token_id", [VOCAB]),
        ("model.bos_token_id", "1"),
        ("model.pad_token_id", -1),
        ("search.top_p", 0),
        ("search.temperature", -1),
        ("search.max_length", 10**6),
        ("search", []),
        ("model.decoder.inputs.input_ids", "no_such_input"),
    ],
)
def test_genai_config_outside_the_allow_list_is_refused(run_cli, copy, key, value):
    _edit_json(copy / "genai_config.json", _set(key, value))
    _refused(run_cli, copy, words=("genai_config.json", key))


@pytest.mark.parametrize(
    "text",
    [
        "[1]",
        "{not json",
        '{"model": 1, "model": 2}',
        "[" * 100_000 + "]" * 100_000,
        "",
    ],
    ids=["not-an-object", "malformed", "duplicate-key", "deep", "empty"],
)
def test_unreadable_genai_config_is_one_line(run_cli, copy, text):
    (copy / "genai_config.json").write_text(text)
    _refused(run_cli, copy, words=("genai_config.json",))


def test_an_escape_the_runtime_may_read_differently_is_refused(run_cli, copy):
    """``model\\u002eonnx`` is ``model.onnx`` to Python; the runtime's reader is another parser."""
    path = copy / "genai_config.json"
    path.write_text(path.read_text().replace('"model.onnx"', '"model\\u002eonnx"'))
    _refused(run_cli, copy, words=("genai_config.json", "backslash"))


def test_configs_the_builder_writes_pass():
    """The allow list covers what adaptkit writes for the CUDA provider and sliding windows
    (built on CPU, these are not exported by the tests; the builder's keys, verbatim)."""
    from pathlib import Path

    from adaptkit_onnx.runtime.genai_config import check_genai_config

    config = {
        "model": {
            "bos_token_id": 1,
            "context_length": 128,
            "decoder": {
                "session_options": {
                    "log_id": "onnxruntime-genai",
                    "provider_options": [{"cuda": {"enable_cuda_graph": "0"}}],
                },
                "filename": "model.onnx",
                "head_size": 16,
                "hidden_size": 64,
                "inputs": {
                    "input_ids": "input_ids",
                    "attention_mask": "attention_mask",
                    "position_ids": "position_ids",
                    "past_key_names": "past_key_values.%d.key",
                    "past_value_names": "past_key_values.%d.value",
                },
                "outputs": {
                    "logits": "logits",
                    "present_key_names": "present.%d.key",
                    "present_value_names": "present.%d.value",
                },
                "num_attention_heads": 4,
                "num_hidden_layers": 2,
                "num_key_value_heads": 2,
                "sliding_window": {
                    "window_size": 64,
                    "slide_key_value_cache": False,
                    "slide_inputs": False,
                    "layers": [0],
                    "cache_slack": 0,
                },
            },
            "eos_token_id": [1, 0],
            "pad_token_id": 0,
            "type": "gemma2",
            "vocab_size": 160,
        },
        "search": {"do_sample": True, "temperature": 0.6, "top_k": 20, "top_p": 0.95, "max_length": 128},
    }
    assert check_genai_config(config, Path("genai_config.json")) is config


# -- 2. symlinks and other files that are not what they seem -----------------------------------


@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("genai_config.json", ()),
        ("model.onnx", ()),
        ("model.onnx.data", ()),
        ("skill.onnx_adapter", ("--adapter-name", "skill")),
        ("adapters.json", ("--adapter-name", "skill")),
        ("tokenizer.json", ("--prompt", "the")),
        ("tokenizer_config.json", ("--prompt", "the")),
    ],
)
def test_a_symlink_out_of_the_folder_is_refused(run_cli, copy, tmp_path, name, args):
    """The target is a faithful copy of the real file: only where it lies is wrong."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.move(copy / name, outside / name)
    os.symlink(outside / name, copy / name)
    extra, prompt = (args, ("--input-ids", "1,2,3")) if args[:1] != ("--prompt",) else ((), args)
    line = _refused(run_cli, copy, *extra, args=prompt, words=(name,))
    assert "out of the export folder" in line


def test_a_symlinked_tokenizer_is_not_read_for_input_ids(run_cli, copy, tmp_path):
    outside = tmp_path / "secret.json"
    outside.write_text("{}")
    (copy / "tokenizer.json").unlink()
    os.symlink(outside, copy / "tokenizer.json")
    result, err = _generated(run_cli, copy)
    assert len(result["output_ids"]) == 4 and result["text"] is None
    assert "warning:" not in err


def test_a_chat_template_symlinked_out_is_refused(run_cli, copy, tmp_path):
    (tmp_path / "t.jinja").write_text("{{ messages }}")
    os.symlink(tmp_path / "t.jinja", copy / "chat_template.jinja")
    _refused(run_cli, copy, args=("--prompt", "the"), words=("chat_template.jinja", "out of the export"))


def test_a_decoder_behind_a_symlink_is_refused(run_cli, copy):
    """External data is found beside the decoder: a decoder moved into a subfolder would make
    that subfolder's (unchecked) files the ones the runtime reads."""
    (copy / "sub").mkdir()
    shutil.move(copy / "model.onnx", copy / "sub" / "model.onnx")
    os.symlink(copy / "model.onnx.data", copy / "sub" / "model.onnx.data")
    os.symlink("sub/model.onnx", copy / "model.onnx")
    _refused(run_cli, copy, words=("model.onnx", "directly in the export folder"))


def test_a_symlink_inside_the_folder_is_fine(run_cli, copy):
    (copy / "weights").mkdir()
    shutil.move(copy / "model.onnx.data", copy / "weights" / "data.bin")
    os.symlink("weights/data.bin", copy / "model.onnx.data")
    result, _ = _generated(run_cli, copy)
    assert len(result["output_ids"]) == 4


@pytest.mark.parametrize("kind", ["dangling", "loop", "fifo", "directory"])
def test_special_files_are_refused(run_cli, copy, kind):
    data = copy / "model.onnx.data"
    data.unlink()
    if kind == "dangling":
        os.symlink("nowhere", data)
    elif kind == "loop":
        os.symlink("model.onnx.data", data)
    elif kind == "fifo":
        os.mkfifo(data)
    else:
        data.mkdir()
    _refused(run_cli, copy, words=("model.onnx.data",))


@pytest.mark.parametrize("location", ["../outside.data", "/etc/passwd", "sub/model.onnx.data"])
def test_external_data_the_graph_names_outside_is_refused(run_cli, copy, location):
    import onnx

    model = onnx.load(str(copy / "model.onnx"), load_external_data=False)
    tensor = next(t for t in model.graph.initializer if t.external_data)
    next(e for e in tensor.external_data if e.key == "location").value = location
    onnx.save(model, str(copy / "model.onnx"))
    _refused(run_cli, copy, words=("external data",))


def test_a_decoder_that_is_not_onnx_is_one_line(run_cli, copy):
    (copy / "model.onnx").write_bytes(b"\x08\x07garbage" * 100)
    _refused(run_cli, copy, words=("model.onnx",))


def test_runtime_errors_at_load_are_one_line(run_cli, copy):
    """Truncated weights pass every file check; the runtime's own error is one line."""
    data = copy / "model.onnx.data"
    data.write_bytes(data.read_bytes()[:1000])
    _refused(run_cli, copy, words=("ONNX Runtime GenAI",))
    _refused(run_cli, copy, "--adapter-name", "skill", words=("ONNX Runtime GenAI",))


# -- 3. tokenizers -----------------------------------------------------------------------------


def test_an_export_drops_a_tokenizer_the_runtime_cannot_read(run_cli, exports):
    out = exports["word_level"]
    assert "warning:" in exports["word_level_stderr"] and "WordLevel" in exports["word_level_stderr"]
    assert not (out / "tokenizer.json").exists() and not (out / "tokenizer_config.json").exists()
    report = json.loads((out / "export-report.json").read_text())
    assert report["tokenizer"]["included"] is False and "WordLevel" in report["tokenizer"]["reason"]
    result, _ = _generated(run_cli, out)
    assert len(result["output_ids"]) == 4
    _refused(run_cli, out, args=("--prompt", "a b"), words=("no tokenizer",))


def test_a_tokenizer_the_runtime_reads_is_kept(run_cli, exports):
    good = exports["good"]
    report = json.loads((good / "export-report.json").read_text())
    assert report["tokenizer"] == {"included": True}
    result, err = _generated(run_cli, good, args=("--prompt", "the hello"))
    assert result["input_ids"] and isinstance(result["text"], str) and "warning" not in err


def _tokenizer_edit(name, edit):
    def apply(folder):
        if callable(edit):
            _edit_json(folder / name, edit)
        else:
            (folder / name).write_text(edit)

    return apply


BROKEN_TOKENIZERS = {
    "malformed": _tokenizer_edit("tokenizer.json", "{broken"),
    "not-an-object": _tokenizer_edit("tokenizer.json", "[1, 2]"),
    "deep": _tokenizer_edit("tokenizer.json", '{"a":' * 100_000 + "1" + "}" * 100_000),
    "word-level": _tokenizer_edit("tokenizer.json", lambda d: d["model"].update(type="WordLevel")),
    "model-null": _tokenizer_edit("tokenizer.json", lambda d: d.update(model=None)),
    "vocab-list": _tokenizer_edit("tokenizer.json", lambda d: d["model"].update(vocab=[1, 2])),
    "merges-numbers": _tokenizer_edit("tokenizer.json", lambda d: d["model"].update(merges=[[1, 2]])),
    "added-token-id-text": _tokenizer_edit(
        "tokenizer.json", lambda d: d.update(added_tokens=[{"id": "x", "content": "a"}])
    ),
    "pre-tokenizer-number": _tokenizer_edit("tokenizer.json", lambda d: d.update(pre_tokenizer={"type": 5})),
    "config-malformed": _tokenizer_edit("tokenizer_config.json", "{x"),
    "config-list": _tokenizer_edit("tokenizer_config.json", "[1]"),
    "config-bos-number": _tokenizer_edit("tokenizer_config.json", lambda d: d.update(bos_token=5)),
    "config-max-length-text": _tokenizer_edit(
        "tokenizer_config.json", lambda d: d.update(model_max_length="x")
    ),
    "config-class-number": _tokenizer_edit("tokenizer_config.json", lambda d: d.update(tokenizer_class=5)),
    "config-tiktoken-file": _tokenizer_edit(
        "tokenizer_config.json", lambda d: d.update(tiktoken_file="/etc/passwd")
    ),
    "config-deep": _tokenizer_edit("tokenizer_config.json", "[" * 100_000 + "]" * 100_000),
    "module-file": _tokenizer_edit("tokenizer_module.json", "{}"),
    "config-missing": lambda folder: (folder / "tokenizer_config.json").unlink(),
    # the model section: anything that could send the runtime's merge loop spinning
    "merges-empty-string": _tokenizer_edit("tokenizer.json", lambda d: d["model"].update(merges=[""])),
    "merges-one-part": _tokenizer_edit("tokenizer.json", lambda d: d["model"].update(merges=["h"])),
    "merges-three-parts": _tokenizer_edit("tokenizer.json", lambda d: d["model"].update(merges=["h e l"])),
    "merges-empty-part": _tokenizer_edit("tokenizer.json", lambda d: d["model"].update(merges=[["", "h"]])),
    "merges-double-space": _tokenizer_edit("tokenizer.json", lambda d: d["model"].update(merges=["h  e"])),
    "merges-unknown-token": _tokenizer_edit("tokenizer.json", lambda d: d["model"].update(merges=["h zz"])),
    "merges-result-unknown": _tokenizer_edit("tokenizer.json", lambda d: d["model"].update(merges=["h l"])),
    "merges-an-object": _tokenizer_edit("tokenizer.json", lambda d: d["model"].update(merges={"h": "e"})),
    "vocab-empty": _tokenizer_edit("tokenizer.json", lambda d: d["model"].update(vocab={})),
    "vocab-empty-token": _tokenizer_edit("tokenizer.json", lambda d: d["model"]["vocab"].update({"": 300})),
    "vocab-shared-id": _tokenizer_edit("tokenizer.json", lambda d: d["model"]["vocab"].update(zz=0)),
    "vocab-negative-id": _tokenizer_edit("tokenizer.json", lambda d: d["model"]["vocab"].update(zz=-1)),
    "vocab-huge-id": _tokenizer_edit("tokenizer.json", lambda d: d["model"]["vocab"].update(zz=2**40)),
    "unk-token-number": _tokenizer_edit("tokenizer.json", lambda d: d["model"].update(unk_token=5)),
    "subword-prefix-empty": _tokenizer_edit(
        "tokenizer.json", lambda d: d["model"].update(continuing_subword_prefix="")
    ),
    "dropout-2": _tokenizer_edit("tokenizer.json", lambda d: d["model"].update(dropout=2)),
    "byte-fallback-text": _tokenizer_edit("tokenizer.json", lambda d: d["model"].update(byte_fallback="y")),
    "added-token-empty": _tokenizer_edit(
        "tokenizer.json", lambda d: d.update(added_tokens=[{"id": 271, "content": ""}])
    ),
    "unigram-empty-piece": _tokenizer_edit(
        "tokenizer.json", lambda d: d.update(model={"type": "Unigram", "vocab": [["", 0.0], ["a", -1.0]]})
    ),
    "unigram-unk-outside": _tokenizer_edit(
        "tokenizer.json", lambda d: d.update(model={"type": "Unigram", "vocab": [["a", -1.0]], "unk_id": 1})
    ),
    # regular expressions the runtime's backtracking engine could spend hours on
    "split-regex": _tokenizer_edit(
        "tokenizer.json",
        lambda d: d.update(
            pre_tokenizer={
                "type": "Split",
                "pattern": {"Regex": "(a+)+$"},
                "behavior": "Isolated",
                "invert": False,
            }
        ),
    ),
    "split-regex-in-sequence": _tokenizer_edit(
        "tokenizer.json",
        lambda d: d.update(
            pre_tokenizer={
                "type": "Sequence",
                "pretokenizers": [
                    {
                        "type": "Split",
                        "pattern": {"Regex": "(a|aa)*$"},
                        "behavior": "Isolated",
                        "invert": False,
                    },
                    d["pre_tokenizer"],
                ],
            }
        ),
    ),
    "replace-regex": _tokenizer_edit(
        "tokenizer.json",
        lambda d: d.update(normalizer={"type": "Replace", "pattern": {"Regex": "(\\s*)*x"}, "content": " "}),
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN_TOKENIZERS))
def test_a_broken_tokenizer_fails_prompts_in_one_line_and_never_input_ids(run_cli, copy, case):
    BROKEN_TOKENIZERS[case](copy)
    _refused(run_cli, copy, args=("--prompt", "the"), words=("tokenizer",))
    result, err = _generated(run_cli, copy)
    assert len(result["output_ids"]) == 4 and result["text"] is None
    assert "warning:" not in err and "Traceback" not in err


def test_input_ids_never_construct_the_tokenizer(run_cli, copy, monkeypatch):
    """A tokenizer can pass every check and still hang the runtime's native code, where no
    signal reaches it: with --input-ids it is never constructed, so the ids are printed."""
    import onnxruntime_genai as og

    def hang(*args, **kwargs):
        raise AssertionError("the tokenizer was constructed")

    monkeypatch.setattr(og, "Tokenizer", hang)
    result, err = _generated(run_cli, copy)
    assert len(result["output_ids"]) == 4 and result["text"] is None and "warning" not in err
    code, out, err = run_cli("generate", copy, "--input-ids", "1,2", "--max-new-tokens", "2")
    assert code == 0 and "Traceback" not in err, err
    assert [int(t) for t in out.split()] and all(t.isdigit() for t in out.split())


#: The pipeline stages of real tokenizer.json files, verbatim (Llama 3, Qwen2.5, Mistral v0.1
#: and v0.3, GPT-2): all pass the regex allow list.
REAL_STAGES = [
    r"""{"pre_tokenizer": {"type": "Sequence", "pretokenizers": [{"type": "Split", "pattern": {"Regex":"""
    r"""
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"},"""  # noqa: E501
    r"""
    "behavior": "Isolated", "invert": false}, {"type": "ByteLevel", "add_prefix_space": false,
    "trim_offsets": true, "use_regex": false}]}}""",
    r"""{"normalizer": {"type": "NFC"}, "pre_tokenizer": {"type": "Sequence", "pretokenizers": [{"type":
    "Split", "pattern": {"Regex":"""
    r"""
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"},"""  # noqa: E501
    r"""
    "behavior": "Isolated", "invert": false}, {"type": "ByteLevel", "add_prefix_space": false,
    "trim_offsets": false, "use_regex": false}]}}""",
    r"""{"normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"},
    {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}, "pre_tokenizer": null,
    "decoder": {"type": "Sequence", "decoders": [{"type": "Replace", "pattern": {"String": "▁"},
    "content": " "}, {"type": "ByteFallback"}, {"type": "Fuse"}, {"type": "Strip", "content": " ",
    "start": 1, "stop": 0}]}}""",
    r"""{"normalizer": null, "pre_tokenizer": {"type": "Metaspace", "replacement": "▁",
    "prepend_scheme": "first", "split": false}}""",
    r"""{"pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
    "use_regex": true}}""",
]


@pytest.mark.parametrize(
    "stages", REAL_STAGES, ids=["llama3", "qwen2", "mistral-v0.1", "mistral-v0.3", "gpt2"]
)
def test_real_tokenizer_pipelines_pass(stages):
    from pathlib import Path

    from adaptkit_onnx.runtime.tokenizer_files import _check_tokenizer_json

    vocab = {"a": 0, "b": 1, "ab": 2, "▁": 3}
    doc = {"model": {"type": "BPE", "vocab": vocab, "merges": ["a b", ["a", "b"]]}} | json.loads(stages)
    _check_tokenizer_json(doc, Path("tokenizer.json"))


@pytest.mark.parametrize("stages", REAL_STAGES[:2], ids=["llama3", "qwen2"])
def test_an_allowed_split_regex_runs_in_the_runtime(run_cli, copy, stages):
    _edit_json(copy / "tokenizer.json", lambda d: d.update(json.loads(stages)))
    result, err = _generated(run_cli, copy, args=("--prompt", "a" * 30 + "b the hello"))
    assert result["input_ids"] and isinstance(result["text"], str) and "warning" not in err


# -- 4. adapters.json --------------------------------------------------------------------------


def _manifest(edit):
    return lambda folder: _edit_json(folder / "adapters.json", edit)


def _entry(**fields):
    return _manifest(lambda d: d["adapters"]["skill"].update(fields))


BROKEN_MANIFESTS = {
    "not-an-object": lambda folder: (folder / "adapters.json").write_text("[1]"),
    "malformed": lambda folder: (folder / "adapters.json").write_text("{"),
    "adapters-a-list": _manifest(lambda d: d.update(adapters=["skill"])),
    "entry-a-string": _manifest(lambda d: d["adapters"].update(skill="skill.onnx_adapter")),
    "file-dotdot": _entry(file=".."),
    "file-parent": _entry(file="../skill.onnx_adapter"),
    "file-absolute": _entry(file="/etc/passwd"),
    "file-missing-key": _manifest(lambda d: d["adapters"]["skill"].pop("file")),
    "file-a-number": _entry(file=3),
    "file-not-there": _entry(file="other.onnx_adapter"),
    "file-a-directory": lambda folder: (
        (folder / "dir.onnx_adapter").mkdir(),
        _edit_json(
            folder / "adapters.json", lambda d: d["adapters"]["skill"].update(file="dir.onnx_adapter")
        ),
    ),
    "file-wrong-kind": _entry(file="model.onnx"),
    "garbage-adapter": lambda folder: (folder / "skill.onnx_adapter").write_bytes(b"\x00garbage" * 64),
    "no-manifest": lambda folder: (folder / "adapters.json").unlink(),
}


@pytest.mark.parametrize("case", sorted(BROKEN_MANIFESTS))
def test_a_broken_adapters_manifest_is_one_line(run_cli, copy, case):
    BROKEN_MANIFESTS[case](copy)
    _refused(run_cli, copy, "--adapter-name", "skill")


def test_the_good_export_switches_its_adapter(run_cli, exports):
    base, _ = _generated(run_cli, exports["good"])
    skill, _ = _generated(run_cli, exports["good"], "--adapter-name", "skill")
    assert len(base["output_ids"]) == len(skill["output_ids"]) == 4


# -- 5. flags ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--seed", str(2**64)),
        ("--seed", str(2**31)),
        ("--seed", "-1"),
        ("--top-p", "nan"),
        ("--top-p", "inf"),
        ("--top-p", "0"),
        ("--temperature", "nan"),
        ("--temperature", "inf"),
        ("--temperature", "-1"),
        ("--temperature", "1e-45"),
        ("--temperature", "0.001"),
    ],
)
def test_sampling_flags_are_finite_and_in_range(run_cli, exports, flag, value):
    _refused(run_cli, exports["good"], "--temperature", "1", flag, value, words=(flag,))


@pytest.mark.parametrize(
    "extra",
    [("--top-p", "0.3", "--seed", "5"), ("--seed", "5"), ("--temperature", "0", "--top-p", "0.9")],
)
def test_sampling_flags_with_greedy_decoding_are_refused(run_cli, exports, extra):
    flag = next(f for f in extra if f in ("--top-p", "--seed"))
    _refused(run_cli, exports["good"], *extra, words=(flag, "sampling"))


@pytest.mark.parametrize("ids", ["1_0,2", "\u0661,2", "+1,2", "0x1", "1,\uff12", "1,-2"])
def test_input_ids_are_ascii_digits(run_cli, exports, ids):
    _refused(run_cli, exports["good"], args=("--input-ids", ids), words=("--input-ids",))


def test_the_smallest_temperature_still_samples(run_cli, exports):
    result, _ = _generated(run_cli, exports["good"], "--temperature", "0.01", "--seed", str(2**31 - 1))
    assert len(result["output_ids"]) == 4
