"""``adaptkit generate``: try an export (ONNX Runtime GenAI) or a model + adapters (PyTorch)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from adaptkit.errors import AdaptkitError

MAX_INPUT_IDS = 100_000


@click.command("generate")
@click.argument("model", metavar="MODEL_OR_EXPORT_DIR")
@click.option(
    "-a",
    "--adapter",
    "adapters",
    multiple=True,
    metavar="SPEC",
    help="PyTorch path: adapter SPEC applied unmerged, repeatable (combined exactly).",
)
@click.option("--prompt", help="Prompt text (needs a tokenizer).")
@click.option("--input-ids", help="Prompt as comma-separated token ids, e.g. 1,2,3.")
@click.option(
    "--max-new-tokens",
    type=click.IntRange(1, 1_000_000),
    default=64,
    show_default=True,
    help="At most this many tokens (fewer at an end-of-sequence token).",
)
@click.option(
    "--temperature",
    type=click.FloatRange(0.0, 100.0),
    default=0.0,
    show_default=True,
    help="0 = greedy; above 0 samples with --top-p and --seed.",
)
@click.option(
    "--top-p",
    type=click.FloatRange(0.0, 1.0, min_open=True),
    default=1.0,
    show_default=True,
    help="Sampling: keep the smallest set of tokens whose probability reaches P.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Sampling seed.")
@click.option(
    "--adapter-name", help="Export made with --lora-inputs: the adapter to activate (adapters.json)."
)
@click.option(
    "--device",
    type=click.Choice(["cpu", "cuda"]),
    default="cpu",
    show_default=True,
    help="Where to run (an export: its execution provider).",
)
@click.option(
    "--json", "as_json", is_flag=True, help='Print {"input_ids", "output_ids", "text", "tokens_per_s"}.'
)
def command(
    model,
    adapters,
    prompt,
    input_ids,
    max_new_tokens,
    temperature,
    top_p,
    seed,
    adapter_name,
    device,
    as_json,
) -> None:
    """Generate from an exported ONNX folder or a Hugging Face model with adapters.

    \b
    An export folder (it has genai_config.json) runs in ONNX Runtime GenAI; anything else is
    a Hugging Face model directory or Hub id run in PyTorch, with each -a adapter attached
    unmerged. Text streams to stdout as it is generated (token ids when there is no
    tokenizer); the speed goes to stderr. Greedy unless --temperature is above 0.

    \b
    Examples:
      adaptkit generate llama-int4 --prompt "Once upon a time" --max-new-tokens 32
      adaptkit generate multi --adapter-name skill-a --input-ids 1,15,27
      adaptkit generate ./llama -a skill-a.yaml --prompt "hello=" --json
    """
    folder = Path(model)
    exported = (folder / "genai_config.json").is_file()
    if (prompt is None) == (input_ids is None):
        raise AdaptkitError("give exactly one of --prompt TEXT or --input-ids 1,2,3")
    if exported and adapters:
        raise AdaptkitError(
            f"{model} is an export: its adapters are already in it (-a is for a Hugging Face model)",
            hint="for an export made with --lora-inputs, pick one with --adapter-name",
        )
    if not exported and adapter_name:
        raise AdaptkitError("--adapter-name picks an adapter of a --lora-inputs export", key="--adapter-name")
    ids = _parse_ids(input_ids) if input_ids is not None else None
    search = {"do_sample": temperature > 0}
    if temperature > 0:
        search.update(temperature=temperature, top_p=top_p, random_seed=seed)
    printer = _Printer(quiet=as_json)
    if exported:
        result = _generate_onnx(folder, prompt, ids, max_new_tokens, search, adapter_name, device, printer)
    else:
        result = _generate_torch(model, adapters, prompt, ids, max_new_tokens, search, device, printer)
    if as_json:
        click.echo(json.dumps(result))
    else:
        printer.end()
        click.echo(f"{len(result['output_ids'])} new tokens, {result['tokens_per_s']:.1f} tokens/s", err=True)


def _parse_ids(text: str) -> list[int]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise AdaptkitError("--input-ids is empty", key="--input-ids")
    if len(parts) > MAX_INPUT_IDS:
        raise AdaptkitError(f"--input-ids has {len(parts)} ids; at most {MAX_INPUT_IDS}", key="--input-ids")
    try:
        ids = [int(p) for p in parts]
    except ValueError:
        raise AdaptkitError(f"--input-ids must be comma-separated integers, got {text[:80]!r}") from None
    if min(ids) < 0:
        raise AdaptkitError(f"token id {min(ids)} is negative", key="--input-ids")
    return ids


def _check_ids(ids: list[int], vocab: int, context: int | None, max_new: int) -> None:
    if not ids:
        raise AdaptkitError("the prompt encodes to no tokens", key="--prompt")
    if max(ids) >= vocab:
        raise AdaptkitError(
            f"token id {max(ids)} is outside the vocabulary (size {vocab})", key="--input-ids"
        )
    if context is not None and len(ids) + max_new > context:
        raise AdaptkitError(
            f"{len(ids)} prompt tokens + {max_new} new tokens exceed the model's context of {context}",
            key="--max-new-tokens",
        )


class _Printer:
    """Streams text (or ids) to stdout as tokens arrive."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.wrote = False

    def text(self, piece: str) -> None:
        if not self.quiet and piece:
            from adaptkit.cli.output import terminal_safe

            # Newlines are text here; every other control character is shown escaped.
            sys.stdout.write("\n".join(terminal_safe(line) for line in piece.split("\n")))
            sys.stdout.flush()
            self.wrote = True

    def end(self) -> None:
        if self.wrote:
            sys.stdout.write("\n")
            sys.stdout.flush()


def _generate_onnx(
    folder: Path,
    prompt: str | None,
    ids: list[int] | None,
    max_new: int,
    search: dict[str, Any],
    adapter_name: str | None,
    device: str,
    printer: _Printer,
) -> dict[str, Any]:
    from adaptkit.io.jsonio import read_json_file
    from adaptkit_onnx.generation import GenaiModel

    genai = read_json_file(folder / "genai_config.json", what="genai_config.json", max_bytes=1 << 20)
    model_cfg = genai.get("model") if isinstance(genai.get("model"), dict) else {}
    vocab = int(model_cfg.get("vocab_size") or 0)
    context = int(model_cfg.get("context_length") or 0) or None
    path = None
    if adapter_name is not None:
        manifest_path = folder / "adapters.json"
        if not manifest_path.is_file():
            raise AdaptkitError(f"{folder} was not exported with --lora-inputs (no adapters.json)")
        manifest = read_json_file(manifest_path, what="adapters.json", max_bytes=16 << 20)
        known = manifest.get("adapters") or {}
        if adapter_name not in known:
            raise AdaptkitError(
                f"no adapter {adapter_name!r} in {manifest_path}; there are: {', '.join(sorted(known))}",
                key="--adapter-name",
            )
        path = folder / Path(str(known[adapter_name]["file"])).name  # never outside the folder
    try:
        runtime = GenaiModel(folder, device)
    except RuntimeError as exc:
        raise AdaptkitError(f"ONNX Runtime GenAI cannot load {folder}: {exc}") from None
    if path is not None:
        runtime.load_adapter(path, adapter_name)
    tokenizer = stream = None
    if _has_tokenizer(folder):
        import onnxruntime_genai as og

        tokenizer = og.Tokenizer(runtime.model)
        stream = tokenizer.create_stream()
    if ids is None:
        if tokenizer is None:
            raise AdaptkitError(f"{folder} has no tokenizer; give the prompt as --input-ids", key="--prompt")
        ids = [int(t) for t in tokenizer.encode(prompt)]
    _check_ids(ids, vocab, context, max_new)

    def on_token(token: int) -> None:
        printer.text(stream.decode(token) if stream is not None else f"{token} ")

    start = time.perf_counter()
    tokens, _ = runtime.generate(ids, max_new, adapter=adapter_name, search=search, on_token=on_token)
    seconds = time.perf_counter() - start
    text = tokenizer.decode(tokens) if tokenizer is not None else None
    return {"input_ids": ids, "output_ids": tokens, "text": text, "tokens_per_s": len(tokens) / seconds}


def _has_tokenizer(folder: Path) -> bool:
    return (folder / "tokenizer.json").is_file() or (folder / "tokenizer.model").is_file()


def _generate_torch(
    model: str,
    specs: tuple[str, ...],
    prompt: str | None,
    ids: list[int] | None,
    max_new: int,
    search: dict[str, Any],
    device: str,
    printer: _Printer,
) -> dict[str, Any]:
    from adaptkit import nn as lora
    from adaptkit.exporting import combined, load_export_adapters
    from adaptkit.io.models import load_causal_lm
    from adaptkit_onnx import generation as gen

    adapter = combined(load_export_adapters(list(specs))) if specs else None
    net, tokenizer = load_causal_lm(model, dtype="fp32", device="cuda" if device == "cuda" else None)
    if adapter is not None:
        lora.load(net, adapter, dtype="fp32")
    if ids is None:
        if tokenizer is None:
            raise AdaptkitError(f"{model} has no tokenizer; give the prompt as --input-ids", key="--prompt")
        ids = [int(t) for t in tokenizer(prompt)["input_ids"]]
    vocab = net.get_input_embeddings().num_embeddings
    context = getattr(net.config, "max_position_embeddings", None)
    _check_ids(ids, vocab, context, max_new)
    eos = gen.eos_ids(net.config)
    shown = ""
    sofar: list[int] = []

    def on_token(token: int) -> None:
        nonlocal shown
        if tokenizer is None:
            printer.text(f"{token} ")
            return
        sofar.append(token)
        text = tokenizer.decode(sofar, skip_special_tokens=True)
        if text.startswith(shown):  # print what is new (a multi-byte character may lag a token)
            printer.text(text[len(shown) :])
            shown = text

    start = time.perf_counter()
    if search["do_sample"]:
        tokens = gen.torch_sample(
            net,
            ids,
            max_new,
            eos,
            temperature=search["temperature"],
            top_p=search["top_p"],
            seed=search["random_seed"],
            on_token=on_token,
        )
    else:
        tokens, _ = gen.torch_greedy(net, ids, max_new, eos, on_token=on_token)
    seconds = time.perf_counter() - start
    text = tokenizer.decode(tokens, skip_special_tokens=True) if tokenizer is not None else None
    return {"input_ids": ids, "output_ids": tokens, "text": text, "tokens_per_s": len(tokens) / seconds}
