"""``adaptkit generate``: try an export (ONNX Runtime GenAI) or a model + adapters (PyTorch)."""

from __future__ import annotations

import json
import math
import re
import sys
import time
from pathlib import Path
from typing import Any

import click

from adaptkit.api import AdaptkitError

MAX_INPUT_IDS = 100_000
#: The smallest sampling temperature. Below it ``logits / T`` leaves float range (1e-45
#: turns every logit into ±inf and the probabilities into NaN), and sampling that cold is
#: greedy decoding anyway: ask for that with ``--temperature 0``.
MIN_TEMPERATURE = 0.01
MAX_TEMPERATURE = 100.0
#: ONNX Runtime GenAI takes a signed 32-bit seed; the PyTorch path keeps to the same range so
#: one seed means one thing on both.
MAX_SEED = 2**31 - 1


class FiniteFloat(click.ParamType):
    """A float in ``[low, high]`` (``low`` excluded when ``low_open``) that is never NaN or
    infinite: click's ``FloatRange`` lets ``nan`` through, since every comparison with NaN is
    false."""

    name = "float"

    def __init__(self, low: float, high: float, *, low_open: bool = False) -> None:
        self.low, self.high, self.low_open = low, high, low_open

    def convert(self, value: Any, param: Any, ctx: Any) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        above_low = number > self.low if self.low_open else number >= self.low
        if not (math.isfinite(number) and above_low and number <= self.high):
            bracket = "(" if self.low_open else "["
            self.fail(
                f"{value!r} is not a finite number in {bracket}{self.low:g}, {self.high:g}]", param, ctx
            )
        return number


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
@click.option(
    "--input-ids",
    help="Prompt as comma-separated token ids, e.g. 1,2,3. The tokenizer is not loaded: "
    "token ids are printed and the JSON text is null.",
)
@click.option(
    "--max-new-tokens",
    type=click.IntRange(1, 1_000_000),
    default=64,
    show_default=True,
    help="At most this many tokens (fewer at an end-of-sequence token).",
)
@click.option(
    "--temperature",
    type=FiniteFloat(0.0, MAX_TEMPERATURE),
    default=0.0,
    show_default=True,
    help=f"0 = greedy; {MIN_TEMPERATURE:g} to {MAX_TEMPERATURE:g} samples with --top-p and --seed.",
)
@click.option(
    "--top-p",
    type=FiniteFloat(0.0, 1.0, low_open=True),
    default=1.0,
    show_default=True,
    help="Sampling: keep the smallest set of tokens whose probability reaches P, in (0, 1].",
)
@click.option("--seed", type=click.IntRange(0, MAX_SEED), default=0, show_default=True, help="Sampling seed.")
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
    unmerged. Text streams to stdout as it is generated (token ids with --input-ids or
    when there is no tokenizer); the speed goes to stderr. Greedy unless --temperature is
    above 0; --top-p and --seed are refused with greedy decoding.

    \b
    An export folder is checked before the runtime opens it: genai_config.json may hold only
    what adaptkit writes, and every file the runtime reads must lie inside the folder.
    --input-ids never opens the tokenizer: the output is token ids ("text" is null).

    \b
    Examples:
      adaptkit generate llama-int4 --prompt "Once upon a time" --max-new-tokens 32
      adaptkit generate multi --adapter-name skill-a --input-ids 1,15,27
      adaptkit generate ./llama -a skill-a.yaml --prompt "hello=" --json
    """
    from adaptkit_onnx.runtime.export_folder import is_export

    folder = Path(model)
    exported = is_export(folder)
    if 0 < temperature < MIN_TEMPERATURE:
        raise AdaptkitError(
            f"{temperature:g} is too cold to sample from; use 0 (greedy) or at least {MIN_TEMPERATURE:g}",
            key="--temperature",
        )
    if temperature == 0:
        _refuse_sampling_flags("top_p", "seed")
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


def _refuse_sampling_flags(*names: str) -> None:
    """Refuse sampling options given with greedy decoding (they would be ignored)."""
    from click.core import ParameterSource

    ctx = click.get_current_context()
    for name in names:
        if ctx.get_parameter_source(name) not in (None, ParameterSource.DEFAULT):
            flag = "--" + name.replace("_", "-")
            raise AdaptkitError(
                f"{flag} only applies when sampling; give --temperature above 0 or drop {flag}", key=flag
            )


#: One token id: ASCII digits only (``int()`` also takes ``1_0`` and other scripts' digits).
_TOKEN_ID = re.compile(r"[0-9]{1,10}")


def _parse_ids(text: str) -> list[int]:
    parts = [p.strip(" ") for p in text.split(",") if p.strip(" ")]
    if not parts:
        raise AdaptkitError("--input-ids is empty", key="--input-ids")
    if len(parts) > MAX_INPUT_IDS:
        raise AdaptkitError(f"--input-ids has {len(parts)} ids; at most {MAX_INPUT_IDS}", key="--input-ids")
    bad = next((p for p in parts if not _TOKEN_ID.fullmatch(p)), None)
    if bad is not None:
        raise AdaptkitError(
            f"--input-ids must be comma-separated integers (ASCII digits 0-9), got {bad[:40]!r}",
            key="--input-ids",
        )
    return [int(p) for p in parts]


def _check_ids(ids: list[int], vocab: int, context: int | None, max_new: int) -> None:
    if not ids:
        raise AdaptkitError("the prompt encodes to no tokens", key="--prompt")
    if min(ids) < 0:  # a tokenizer's "unknown" marker (-1), never a token
        raise AdaptkitError(f"token id {min(ids)} is negative", key="--prompt")
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
            from adaptkit.api.console import terminal_safe

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
    """Generate from an export folder. The folder is untrusted input: everything the runtime
    will open is vetted before it opens anything (:mod:`adaptkit_onnx.runtime.export_folder`,
    :mod:`adaptkit_onnx.runtime.tokenizer_files`), and with ``--input-ids`` the tokenizer is
    never constructed (a hostile one can hang the runtime's native code past any signal): ids
    are printed and ``text`` is ``None``."""
    from adaptkit_onnx.runtime import export_folder as ef
    from adaptkit_onnx.runtime import tokenizer_files

    vetted = ef.vet_export_folder(folder)
    adapter_path = ef.adapter_file(folder, adapter_name) if adapter_name is not None else None
    if ids is None:
        if not tokenizer_files.has_tokenizer(folder):
            raise AdaptkitError(f"{folder} has no tokenizer; give the prompt as --input-ids", key="--prompt")
        tokenizer = tokenizer_files.load_runtime_tokenizer(folder)
        ids = [int(t) for t in _runtime_call(lambda: tokenizer.encode(prompt), "encode the prompt")]
    else:
        tokenizer = None
    _check_ids(ids, vetted.vocab_size, vetted.context_length, max_new)
    runtime = _runtime_call(lambda: _load_model(folder, device), f"load {folder}")
    if adapter_path is not None:
        _runtime_call(lambda: runtime.load_adapter(adapter_path, adapter_name), f"load {adapter_path}")
    stream = tokenizer.create_stream() if tokenizer is not None else None

    def on_token(token: int) -> None:
        printer.text(stream.decode(token) if stream is not None else f"{token} ")

    start = time.perf_counter()
    tokens, _ = _runtime_call(
        lambda: runtime.generate(ids, max_new, adapter=adapter_name, search=search, on_token=on_token),
        "generate",
    )
    seconds = time.perf_counter() - start
    text = _runtime_call(lambda: tokenizer.decode(tokens), "decode") if tokenizer is not None else None
    return {"input_ids": ids, "output_ids": tokens, "text": text, "tokens_per_s": len(tokens) / seconds}


def _load_model(folder: Path, device: str) -> Any:
    from adaptkit_onnx.runtime.genai import GenaiModel

    return GenaiModel(folder, device)


def _runtime_call(call: Any, doing: str) -> Any:
    """``call()``, with the runtime's errors (RuntimeError and friends from its C++ side) as
    one line. adaptkit's own errors pass through."""
    try:
        return call()
    except AdaptkitError:
        raise
    except Exception as exc:  # pybind11 maps C++ exceptions to RuntimeError, ValueError, ...
        text = str(exc).strip()
        why = text.splitlines()[0][:300] if text else type(exc).__name__
        raise AdaptkitError(f"ONNX Runtime GenAI could not {doing}: {why}") from None


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
    from adaptkit.api import nn as lora
    from adaptkit.api.export import combined, load_export_adapters
    from adaptkit.api.models import load_causal_lm
    from adaptkit_onnx.runtime import torch_decode

    adapter = combined(load_export_adapters(list(specs))) if specs else None
    # --input-ids: the tokenizer is not loaded, as for an export (ids are printed).
    net, tokenizer = load_causal_lm(
        model, dtype="fp32", device="cuda" if device == "cuda" else None, tokenizer=ids is None
    )
    if adapter is not None:
        lora.load(net, adapter, dtype="fp32")
    if ids is None:
        if tokenizer is None:
            raise AdaptkitError(f"{model} has no tokenizer; give the prompt as --input-ids", key="--prompt")
        ids = [int(t) for t in tokenizer(prompt)["input_ids"]]
    vocab = net.get_input_embeddings().num_embeddings
    context = getattr(net.config, "max_position_embeddings", None)
    _check_ids(ids, vocab, context, max_new)
    eos = torch_decode.eos_ids(net.config)
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
        tokens = torch_decode.torch_sample(
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
        tokens, _ = torch_decode.torch_greedy(net, ids, max_new, eos, on_token=on_token)
    seconds = time.perf_counter() - start
    text = tokenizer.decode(tokens, skip_special_tokens=True) if tokenizer is not None else None
    return {"input_ids": ids, "output_ids": tokens, "text": text, "tokens_per_s": len(tokens) / seconds}
