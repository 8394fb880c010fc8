"""``adaptkit generate``: run MODEL on the runtime that accepts it, or in PyTorch.

Runtimes are plugins (``register_runtimes``): ONNX Runtime GenAI for an export folder, llama.cpp
for a GGUF file, and whatever a third party adds. A MODEL none accepts is a Hugging Face model
run in PyTorch with the ``-a`` SPECs attached unmerged (:mod:`adaptkit.generating`). This module
owns what every runtime shares: the flags and their checks, streaming to stdout, ``--json``.
"""

from __future__ import annotations

import json
import math
import re
import sys
from typing import Any

import click

from adaptkit.errors import AdaptkitError

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
@click.argument("model", metavar="MODEL")
@click.option(
    "-a",
    "--adapter",
    "adapters",
    multiple=True,
    metavar="SPEC",
    help="Adapter, repeatable. PyTorch: a SPEC applied unmerged (several are combined exactly); "
    "llama.cpp: an adapter GGUF (scale 1) or the adapters.json of an export --gguf --lora-inputs.",
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
    """Generate from an ONNX export, a GGUF file or a Hugging Face model with adapters.

    \b
    MODEL picks the runtime:
      an export folder (genai_config.json)   ONNX Runtime GenAI; --adapter-name for --lora-inputs
      a GGUF file (base model)               llama.cpp (llama-cpp-python), -a adapter GGUFs
      anything else                          a Hugging Face folder or Hub id in PyTorch, each
                                             -a SPEC attached unmerged (the reference)
    Text streams to stdout as it is generated (token ids with --input-ids or when there is
    no tokenizer); the speed goes to stderr. Greedy unless --temperature is above 0; --top-p
    and --seed are refused with greedy decoding.

    \b
    Untrusted input is checked before a runtime opens it: an export's genai_config.json may
    hold only what adaptkit writes, and every file a runtime reads must lie inside its folder.
    --input-ids never opens the tokenizer: the output is token ids ("text" is null).

    \b
    Examples:
      adaptkit generate llama-int4 --prompt "Once upon a time" --max-new-tokens 32
      adaptkit generate multi --adapter-name skill-a --input-ids 1,15,27
      adaptkit generate base-q4_k_m.gguf -a out/adapter.gguf --prompt "hello=" --json
      adaptkit generate ./llama -a skill-a.yaml --prompt "hello=" --json
    """
    from adaptkit.plugins.records import GenerateRequest

    if 0 < temperature < MIN_TEMPERATURE:
        raise AdaptkitError(
            f"{temperature:g} is too cold to sample from; use 0 (greedy) or at least {MIN_TEMPERATURE:g}",
            key="--temperature",
        )
    if temperature == 0:
        _refuse_sampling_flags("top_p", "seed")
    if (prompt is None) == (input_ids is None):
        raise AdaptkitError("give exactly one of --prompt TEXT or --input-ids 1,2,3")
    ids = _parse_ids(input_ids) if input_ids is not None else None
    request = GenerateRequest(
        model=model,
        adapters=tuple(adapters),
        prompt=prompt,
        input_ids=tuple(ids) if ids is not None else None,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        adapter_name=adapter_name,
        device=device,
    )
    printer = _Printer(quiet=as_json)
    runtime = _runtime_for(model)
    if runtime is None:
        from adaptkit.generating import generate_torch

        result = generate_torch(request, printer.text)
    else:
        result = runtime.generate(request, printer.text)
    if as_json:
        click.echo(json.dumps(result))
    else:
        printer.end()
        click.echo(f"{len(result['output_ids'])} new tokens, {result['tokens_per_s']:.1f} tokens/s", err=True)


def _runtime_for(model: str) -> Any:
    """The runtime that accepts MODEL (its dependencies checked), or ``None`` for PyTorch."""
    from adaptkit.errors import PluginError
    from adaptkit.plugins import get_registry

    takers = [r for r in get_registry().all("runtime") if _accepts(r.obj, model)]
    if len(takers) > 1:
        names = ", ".join(f"{r.name!r} (plugin {r.plugin!r})" for r in takers)
        raise PluginError(f"{model}: more than one runtime accepts it: {names}")
    return takers[0].require_available() if takers else None


def _accepts(runtime: Any, model: str) -> bool:
    try:
        return bool(runtime.accepts(model))
    except Exception:  # a runtime's check must never take the command down: it declines
        return False


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
