"""The handoff to ONNX Runtime GenAI's model builder (run in a child process).

:func:`genai_unsupported` says why a model cannot take the generation graph (the exporter
then falls back to the logits-only graph, or refuses when the generation graph was asked
for); :func:`run_builder` runs :mod:`adaptkit_onnx.generation.builder_worker` and reports its
time and peak memory; :func:`finish_config` fixes up ``genai_config.json`` for models without
an end-of-sequence token.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from adaptkit.api import AdaptkitError

#: Decoder-only architectures the builder turns into a KV-cache graph. Llama, Mistral, Qwen2
#: and Phi-3 are tested here; every export of any of them is parity-checked before it is kept.
GENAI_ARCHITECTURES = frozenset(
    {
        "LlamaForCausalLM",
        "MistralForCausalLM",
        "Qwen2ForCausalLM",
        "Qwen3ForCausalLM",
        "Phi3ForCausalLM",
        "GemmaForCausalLM",
        "Gemma2ForCausalLM",
        "GraniteForCausalLM",
        "OlmoForCausalLM",
        "SmolLM3ForCausalLM",
    }
)
PRECISIONS = ("fp32", "fp16", "int4")
DEVICES = ("cpu", "cuda")


def head_size(config: Any) -> int:
    """Attention head size of a Hugging Face config (``head_dim``, else hidden / heads)."""
    return int(getattr(config, "head_dim", None) or config.hidden_size // int(config.num_attention_heads))


def genai_unsupported(config: Any) -> str | None:
    """Why ``config`` cannot be built as a generation graph, or ``None`` when it can."""
    archs = list(getattr(config, "architectures", None) or [])
    if not archs or archs[0] not in GENAI_ARCHITECTURES:
        name = archs[0] if archs else getattr(config, "model_type", "?")
        return f"the generation graph builder does not support {name}"
    size = head_size(config)
    if size % 16:
        # ORT's GroupQueryAttention kernel refuses these head sizes.
        return f"head size {size} is not a multiple of 16 (GroupQueryAttention needs one)"
    return None


def run_builder(
    src: Path,
    out: Path,
    precision: str,
    device: str,
    scratch: Path,
    *,
    separate_projections: bool = False,
    int4: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Build ``src`` (a Hugging Face folder) into ``out``; returns seconds and the child's peak
    RSS. A failure is an :class:`AdaptkitError` carrying the builder's last line. ``int4``:
    ``{"block_size", "accuracy_level"}`` for MatMulNBits (the builder's own option names).

    The child is started so that nothing from the model folder or the user's working directory
    can run in it (see :func:`child_command`): its working directory is ``scratch`` (ours), its
    ``sys.path`` has no current-directory entry, its stdin is empty (no prompt can be answered)
    and the Hugging Face libraries are offline.
    """
    from adaptkit_onnx.memory import release_memory

    scratch.mkdir(parents=True, exist_ok=True)
    release_memory()  # the child's memory adds to ours: keep ours small while it runs
    log_path = scratch / "builder.log"
    args = [
        str(Path(src).absolute()),
        str(Path(out).absolute()),
        precision,
        builder_device(precision, device),
        str((scratch / "cache").absolute()),
    ]
    if separate_projections:
        args.append("--separate-projections")
    for key, value in (int4 or {}).items():
        args += ["--option", f"{key}={int(value)}"]
    start = time.perf_counter()
    with open(log_path, "wb") as log:
        rc = subprocess.run(
            child_command("adaptkit_onnx.generation.builder_worker", args),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=child_env(),
            cwd=scratch,
            check=False,
        ).returncode
    seconds = time.perf_counter() - start
    if rc != 0:
        lines = [ln for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
        last = lines[-1].strip() if lines else f"exit code {rc}"
        raise AdaptkitError(f"the ONNX Runtime GenAI model builder failed: {last}", key=str(src))
    peak = _reported_peak_mib(log_path)
    report = {"seconds": seconds, "peak_rss_mib": peak, "precision": precision, "device": device}
    return {**report, "int4": dict(int4)} if int4 else report


def _reported_peak_mib(log_path: Path) -> float | None:
    """The child's own peak RSS, as its last report line says; where it could not say (no
    ``/proc``), the largest waited-for child's ``ru_maxrss``, which may include our RSS at fork."""
    from adaptkit_onnx.generation.builder_worker import PEAK_LINE

    for line in reversed(log_path.read_text(errors="replace").splitlines()):
        word, _, value = line.strip().partition(" ")
        if word == PEAK_LINE and value.isdigit():
            return int(value) / 1024
    return _children_peak_mib()


#: Runs a module as ``python -m`` would, minus the current directory on ``sys.path``
#: (``-c`` puts ``''`` first; ``-P`` would drop it, but only from Python 3.11 on).
_BOOTSTRAP = (
    "import runpy, sys; "
    "sys.path[:] = [p for p in sys.path if p not in ('', '.')]; "
    "runpy.run_module(sys.argv.pop(1), run_name='__main__', alter_sys=True)"
)


def child_command(module: str, args: list[str]) -> list[str]:
    """The argv that runs ``module`` in a fresh interpreter with no current-directory entry on
    ``sys.path``: a model folder used as the working directory (``cd model && adaptkit export
    --model .``) that ships ``sympy.py`` or ``onnx_ir.py`` is never imported in its place.
    Not ``-I``: that would also drop ``PYTHONPATH`` and the user site, which a legitimately
    installed environment may rely on."""
    return [sys.executable, "-c", _BOOTSTRAP, module, *args]


def child_env() -> dict[str, str]:
    """The environment of a child process: ours, with ``PYTHONPATH`` entries made absolute
    (an empty or relative entry means the working directory, which is not the user's in the
    child), warnings silenced and the Hugging Face libraries offline (the child reads local
    folders only; nothing may be fetched)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    if env.get("PYTHONPATH"):
        entries = [os.path.abspath(e) for e in env["PYTHONPATH"].split(os.pathsep) if e]
        env["PYTHONPATH"] = os.pathsep.join(entries)
    return env


def _children_peak_mib() -> float | None:
    """The largest peak RSS among waited-for child processes (``None`` where unknown)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def builder_device(precision: str, device: str) -> str:
    """The execution provider the builder is told. Its fp16 graphs exist only in the CUDA
    flavour (FP16 CPU is not a combination it offers); ONNX Runtime's CPU provider runs that
    graph too — slowly, few CPUs do fp16 math — which is how ``--precision fp16 --device cpu``
    is built and verified."""
    return "cuda" if precision == "fp16" else device


def finish_config(out: Path, config: Any, device: str) -> dict[str, Any]:
    """Make ``genai_config.json`` say what was asked for: the CPU provider for ``--device cpu``
    (an fp16 graph comes out of the builder configured for CUDA), and ``[]`` end-of-sequence
    ids (generation runs to ``max_length``) for a model whose config names no EOS token,
    instead of the builder's placeholder."""
    path = out / "genai_config.json"
    genai = json.loads(path.read_text())
    if device == "cpu":
        genai["model"]["decoder"].setdefault("session_options", {})["provider_options"] = []
    if getattr(config, "eos_token_id", None) is None:
        genai["model"]["eos_token_id"] = []
        if getattr(config, "pad_token_id", None) is None:
            genai["model"]["pad_token_id"] = 0
    path.write_text(json.dumps(genai, indent=4) + "\n")
    return genai
