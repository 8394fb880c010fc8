"""A small Llama trained from scratch on the Python standard library, plus a LoRA adapter: the
fixture :mod:`benchmarks.bench_quality` measures quantized exports on.

Random weights are the worst case for low-bit exports (incompressible Gaussian matrices,
near-flat logits); a trained model is what people export. Every machine that runs adaptkit
has real text on disk: the running Python's standard library. Built once, deterministically,
and cached like :mod:`benchmarks.bench_realsize`'s model (``$ADAPTKIT_CACHE`` or
``~/.cache/adaptkit``/bench), keyed by :data:`FIXTURE_VERSION`, the spec and the Python
version (whose standard library is the text):

- **corpus**: the ``*.py`` files under ``sysconfig.get_paths()["stdlib"]`` in sorted order,
  without tests, ``site-packages``, the codec tables (``encodings/``), the build's
  ``_sysconfigdata*`` and ``config-*`` and ``pydoc_data/topics.py``; that is the **code**
  domain. The **docs** domain is the documentation that ships with it — no ``.rst``/``.txt``
  docs are installed, so: the language-reference topics of ``pydoc_data.topics`` (what
  ``help("assert")`` prints) and every module, class and function docstring, read with
  :mod:`ast` (``pydoc``/``inspect`` would import all of the standard library, ``antigravity``
  and ``turtle`` included), one ``module|class|def qualified.name`` header each. A file is held
  out when a hash of its path says so (1 in 16), and with it its docstrings; a topic by a
  hash of its name (1 in 8). Nothing held out is trained on, by the tokenizer, the base or the
  adapter.
- **tokenizer**: byte-level BPE (GPT-2's pre-tokenizer) trained with ``tokenizers`` on the
  training text, ``<|endoftext|>`` = id 0 between documents, saved as a transformers fast
  tokenizer (``tokenizer.json`` + ``tokenizer_config.json``) in the model folder.
- **base**: a ``LlamaForCausalLM`` (untied head) trained from scratch on the code domain with
  plain PyTorch AdamW in float32: random ``seq``-token windows of the token stream, a fixed
  seed, linear warm-up then cosine decay, gradient clipping at 1. Every weight matrix's input
  width (hidden, intermediate) is a multiple of 256: llama.cpp's k-quants (``Q4_K_M``) pack
  rows in 256-wide super-blocks and quietly fall back to other types (``Q5_0``, ``Q8_0``) for
  rows that are not.
- **adapter**: ``adaptkit train --backend lora`` on the docs domain (all linear layers), so it
  lowers the held-out docs loss; the fixture records base and adapted held-out losses.
- **eval windows**: :attr:`Spec.windows` windows of :attr:`Spec.window_len` tokens, half from
  held-out code, half from held-out docs, evenly spaced.

    python -m benchmarks.quality_model            # build (about 30 minutes on 2 shared cores) or show
    python -m benchmarks.quality_model --quick    # the tiny fixture --quick benchmarks use
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import math
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
import tokenize
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.bench_realsize import cache_dir

#: Bump when anything that changes the fixture's bytes changes (corpus rules, training code).
FIXTURE_VERSION = 1
EOS = "<|endoftext|>"
SKIP_DIRS = frozenset(
    {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "encodings"}
)


@dataclass(frozen=True)
class Spec:
    """Everything that shapes a fixture (part of its cache key)."""

    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    seq: int  # training window (tokens)
    batch: int
    steps: int
    lr: float
    warmup: int
    lora_rank: int
    lora_alpha: float
    lora_steps: int
    lora_batch: int
    lora_lr: float
    windows: int  # quality windows (half code, half docs)
    window_len: int
    loss_windows: int  # held-out loss windows per domain
    file_stride: int = 1  # use every n-th file of the corpus (1: all)
    seed: int = 0


SPECS = {
    "full": Spec(
        vocab=8192, hidden=512, layers=6, heads=8, kv_heads=2, intermediate=1024, seq=256, batch=8,
        steps=300, lr=2e-3, warmup=20, lora_rank=16, lora_alpha=32.0, lora_steps=80, lora_batch=8,
        lora_lr=1e-3, windows=32, window_len=256, loss_windows=48,
    ),
    "quick": Spec(
        vocab=1024, hidden=256, layers=2, heads=4, kv_heads=1, intermediate=512, seq=128, batch=8,
        steps=60, lr=3e-3, warmup=6, lora_rank=8, lora_alpha=16.0, lora_steps=12, lora_batch=8,
        lora_lr=2e-3, windows=4, window_len=128, loss_windows=8, file_stride=16,
    ),
}  # fmt: skip


# -- the corpus ---------------------------------------------------------------------------------


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _held_out(key: str, every: int) -> bool:
    return int(hashlib.sha256(key.encode()).hexdigest(), 16) % every == 0


def source_files() -> list[tuple[str, Path]]:
    """``(relative posix path, path)`` of the corpus's ``*.py`` files, sorted by that path."""
    root = stdlib_root()
    found = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        parts = rel.parts
        if SKIP_DIRS & set(parts[:-1]) or parts[0].startswith("config-"):
            continue
        if rel.name.startswith("_sysconfigdata") or rel.as_posix() == "pydoc_data/topics.py":
            continue
        found.append((rel.as_posix(), path))
    found.sort()
    return found


def _read(path: Path) -> str | None:
    try:
        with tokenize.open(path) as fh:  # honours coding cookies
            return fh.read()
    except (OSError, SyntaxError, UnicodeDecodeError):
        return None


def docstrings(name: str, source: str) -> str:
    """Every module, class and function docstring of ``source``, in source order, each under a
    ``module|class|def qualified.name`` line (empty when there are none or it does not parse)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return ""
    module = name.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
    entries = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                qual = f"{prefix}.{child.name}"
                doc = ast.get_docstring(child)
                if doc:
                    kind = "class" if isinstance(child, ast.ClassDef) else "def"
                    entries.append(f"{kind} {qual}\n{doc}")
                visit(child, qual)

    doc = ast.get_docstring(tree)
    if doc:
        entries.append(f"module {module}\n{doc}")
    visit(tree, module)
    return "\n\n".join(entries)


@dataclass
class Corpus:
    """Documents by domain and split: ``{"code"|"docs": {"train"|"held_out": [text, ...]}}``."""

    docs: dict[str, dict[str, list[str]]]
    files: int
    sha256: str

    def chars(self) -> dict[str, dict[str, int]]:
        return {d: {s: sum(map(len, texts)) for s, texts in v.items()} for d, v in self.docs.items()}


def gather(stride: int = 1) -> Corpus:
    """The corpus, deterministically (see the module docstring); ``stride`` keeps every n-th
    file and topic of each split (the quick fixture's smaller corpus)."""
    from pydoc_data.topics import topics

    docs = {d: {"train": [], "held_out": []} for d in ("code", "docs")}
    digest = hashlib.sha256()
    files = 0
    by_split: dict[str, list[tuple[str, Path]]] = {"train": [], "held_out": []}
    for rel, path in source_files():
        by_split["held_out" if _held_out(rel, 16) else "train"].append((rel, path))
    for split, chosen in by_split.items():
        for rel, path in chosen[::stride]:
            text = _read(path)
            if not text or not text.strip():
                continue
            files += 1
            digest.update(rel.encode() + b"\0" + text.encode() + b"\0")
            docs["code"][split].append(text)
            doc = docstrings(rel, text)
            if doc:
                docs["docs"][split].append(doc)
    by_split = {"train": [], "held_out": []}
    for key in sorted(topics):
        by_split["held_out" if _held_out(key, 8) else "train"].append(key)
    for split, keys in by_split.items():
        for key in keys[::stride]:
            digest.update(key.encode() + b"\0" + topics[key].encode() + b"\0")
            docs["docs"][split].append(topics[key])
    return Corpus(docs, files, digest.hexdigest())


# -- the tokenizer ------------------------------------------------------------------------------


def train_tokenizer(corpus: Corpus, vocab: int, folder: Path) -> None:
    """Byte-level BPE on the training text of both domains, saved as a fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        min_frequency=2,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = corpus.docs["code"]["train"] + corpus.docs["docs"]["train"]
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS)
    fast.model_max_length = 1 << 20  # windows are cut by the caller
    fast.save_pretrained(folder)


def encode(folder: Path, texts: list[str]) -> list[int]:
    """One stream: each text's ids followed by ``<|endoftext|>`` (id 0)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    eos = tok.token_to_id(EOS)
    ids: list[int] = []
    for enc in tok.encode_batch(texts, add_special_tokens=False):
        ids += enc.ids
        ids.append(eos)
    return ids


def windows(stream: list[int], n: int, length: int) -> list[list[int]]:
    """``n`` windows of ``length`` tokens, evenly spaced over ``stream`` (non-overlapping when
    it is long enough)."""
    if len(stream) < length + 1:
        raise SystemExit(f"held-out stream of {len(stream)} tokens is shorter than a window ({length})")
    step = (len(stream) - length) / max(n - 1, 1)
    return [stream[round(i * step) : round(i * step) + length] for i in range(n)]


# -- the base model -----------------------------------------------------------------------------


def llama_config(spec: Spec):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=spec.vocab,
        hidden_size=spec.hidden,
        intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.kv_heads,
        max_position_embeddings=max(512, 2 * spec.window_len),
        rope_theta=10000.0,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=0,
        architectures=["LlamaForCausalLM"],
    )


def mean_loss(model, wins: list[list[int]], batch: int = 8) -> float:
    """Mean next-token cross-entropy (nats) over every position of ``wins``."""
    import torch
    import torch.nn.functional as F

    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(wins), batch):
            ids = torch.tensor(wins[i : i + batch])
            logits = model(input_ids=ids[:, :-1]).logits
            total += float(F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten(), reduction="sum"))
            count += ids[:, 1:].numel()
    return total / count


def train_base(spec: Spec, stream: list[int], held_out: list[list[int]], folder: Path, log) -> dict:
    """Pre-train the base from scratch on ``stream`` (float32 AdamW); save it to ``folder``."""
    import torch
    import torch.nn.functional as F
    from transformers import LlamaForCausalLM

    torch.manual_seed(spec.seed)
    model = LlamaForCausalLM(llama_config(spec)).float()
    params = sum(p.numel() for p in model.parameters())
    decay = [p for n, p in model.named_parameters() if p.ndim == 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=spec.lr,
        betas=(0.9, 0.95),
    )

    def lr_at(step: int) -> float:  # linear warm-up, cosine decay to a tenth
        if step < spec.warmup:
            return spec.lr * (step + 1) / spec.warmup
        t = (step - spec.warmup) / max(spec.steps - spec.warmup, 1)
        return spec.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))

    data = torch.tensor(stream, dtype=torch.long)
    g = torch.Generator().manual_seed(spec.seed)
    initial = mean_loss(model, held_out)
    losses, start = [], time.perf_counter()
    model.train()
    for step in range(spec.steps):
        starts = torch.randint(0, len(data) - spec.seq - 1, (spec.batch,), generator=g)
        ids = torch.stack([data[s : s + spec.seq + 1] for s in starts.tolist()])
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        logits = model(input_ids=ids[:, :-1]).logits
        loss = F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if (step + 1) % 25 == 0 or step + 1 == spec.steps:
            elapsed = time.perf_counter() - start
            recent = sum(losses[-25:]) / len(losses[-25:])
            log(f"base step {step + 1}/{spec.steps}: loss {recent:.3f} ({elapsed:.0f} s)")
    seconds = time.perf_counter() - start
    model.eval()
    final = mean_loss(model, held_out)
    model.save_pretrained(folder)
    tail = losses[-max(1, spec.steps // 10) :]
    return {
        "parameters": params,
        "train_seconds": round(seconds, 1),
        "train_tokens": spec.steps * spec.batch * spec.seq,
        "tokens_per_s": round(spec.steps * spec.batch * spec.seq / seconds),
        "train_loss_last_10pct": round(sum(tail) / len(tail), 4),
        "held_out_code_loss_initial": round(initial, 4),
        "held_out_code_loss": round(final, 4),
        "loss_curve": [
            round(sum(losses[i : i + 25]) / len(losses[i : i + 25]), 4) for i in range(0, len(losses), 25)
        ],
    }


# -- the adapter --------------------------------------------------------------------------------


def train_adapter(spec: Spec, base: Path, stream: list[int], out: Path, scratch: Path, log) -> dict:
    """``adaptkit train --backend lora`` on ``stream`` cut into ``seq``-token records."""
    records = [stream[i : i + spec.seq] for i in range(0, len(stream) - spec.seq + 1, spec.seq)]
    data = scratch / "docs-train.jsonl"
    data.write_text("".join(json.dumps({"input_ids": r}) + "\n" for r in records))
    metrics = scratch / "lora-metrics.jsonl"
    argv = [
        sys.executable, "-m", "adaptkit", "train", "--backend", "lora", "--model", str(base),
        "--data", str(data), "-o", str(out), "--targets", "all-linear", "--rank", str(spec.lora_rank),
        "--alpha", str(spec.lora_alpha), "--lr", str(spec.lora_lr), "--lr-schedule", "cosine",
        "--warmup-steps", str(max(1, spec.lora_steps // 10)), "--max-steps", str(spec.lora_steps),
        "--batch-size", str(spec.lora_batch), "--seq-len", str(spec.seq), "--seed", str(spec.seed),
        "--eval-records", "0", "--metrics", str(metrics), "--device", "cpu",
    ]  # fmt: skip
    log("adapter: " + " ".join(["adaptkit", *argv[3:]]))
    start = time.perf_counter()
    run = subprocess.run(argv, capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"adaptkit train failed:\n{run.stderr[-3000:]}")
    seconds = time.perf_counter() - start
    steps = [json.loads(x) for x in metrics.read_text().splitlines()]
    losses = [x["loss"] for x in steps if "step" in x]
    tail = losses[-max(1, len(losses) // 10) :]
    return {
        "command": "adaptkit " + " ".join(a if not a.startswith("/") else Path(a).name for a in argv[3:]),
        "records": len(records),
        "train_seconds": round(seconds, 1),
        "train_tokens": spec.lora_steps * spec.lora_batch * spec.seq,
        "train_loss_first": round(losses[0], 4),
        "train_loss_last_10pct": round(sum(tail) / len(tail), 4),
    }


def adapted(base: Path, adapter: Path):
    """The base in float32 with ``adapter`` attached unmerged (the exporter's parity reference)."""
    from transformers import AutoModelForCausalLM

    from adaptkit.io.native import load_adapter
    from adaptkit_onnx.parity import attach_reference

    model = AutoModelForCausalLM.from_pretrained(base, dtype="float32").eval()
    attach_reference(model, load_adapter(adapter), dtype="fp32")
    return model


# -- the fixture --------------------------------------------------------------------------------


@dataclass
class Fixture:
    """A built fixture: ``base/`` (model + tokenizer), the adapter, the eval windows."""

    folder: Path
    info: dict

    @property
    def base(self) -> Path:
        return self.folder / "base"

    @property
    def adapter(self) -> Path:
        return self.folder / "adapter.safetensors"

    def windows(self) -> tuple[list[list[int]], list[str]]:
        """The quality windows and each one's domain (``code``/``docs``)."""
        data = json.loads((self.folder / "eval-windows.json").read_text())
        return data["windows"], data["domains"]


def fixture_dir(name: str) -> Path:
    spec = SPECS[name]
    key = hashlib.sha256(json.dumps(asdict(spec), sort_keys=True).encode()).hexdigest()[:8]
    py = "".join(map(str, sys.version_info[:3]))
    return cache_dir() / f"quality-{name}-v{FIXTURE_VERSION}-py{py}-{key}"


def log_err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def fixture(name: str = "full", log=log_err) -> Fixture:
    """The cached fixture ``name`` (:data:`SPECS`), built first when missing (atomically)."""
    folder = fixture_dir(name)
    if (folder / "fixture.json").is_file():
        return Fixture(folder, json.loads((folder / "fixture.json").read_text()))
    import torch

    torch.set_num_threads(max(1, min(torch.get_num_threads(), 16)))
    spec = SPECS[name]
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-"))
    try:
        info = _build(spec, tmp, log)
        info["name"] = name
        (tmp / "fixture.json").write_text(json.dumps(info, indent=2) + "\n")
        tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Fixture(folder, info)


def _build(spec: Spec, tmp: Path, log) -> dict:
    start = time.perf_counter()
    corpus = gather(spec.file_stride)
    log(f"corpus: {corpus.files} files of {stdlib_root()}, characters {corpus.chars()}")
    base = tmp / "base"
    base.mkdir()
    t = time.perf_counter()
    train_tokenizer(corpus, spec.vocab, base)
    tokenizer_s = time.perf_counter() - t
    streams = {d: {s: encode(base, texts) for s, texts in v.items()} for d, v in corpus.docs.items()}
    tokens = {d: {s: len(ids) for s, ids in v.items()} for d, v in streams.items()}
    log(f"tokens: {tokens} (tokenizer trained in {tokenizer_s:.1f} s)")
    loss_windows = {
        d: windows(streams[d]["held_out"], spec.loss_windows, spec.seq + 1) for d in ("code", "docs")
    }
    half = spec.windows // 2
    quality = {d: windows(streams[d]["held_out"], half, spec.window_len) for d in ("code", "docs")}
    (tmp / "eval-windows.json").write_text(
        json.dumps(
            {"windows": quality["code"] + quality["docs"], "domains": ["code"] * half + ["docs"] * half}
        )
    )
    base_info = train_base(spec, streams["code"]["train"], loss_windows["code"], base, log)
    log(f"base: {base_info['parameters']:,} parameters, {base_info['train_seconds']} s, held-out code loss "
        f"{base_info['held_out_code_loss']}")  # fmt: skip
    scratch = tmp / "scratch"
    scratch.mkdir()
    adapter_info = train_adapter(
        spec, base, streams["docs"]["train"], tmp / "adapter.safetensors", scratch, log
    )
    shutil.rmtree(scratch)

    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(base, dtype="float32").eval()
    with_adapter = adapted(base, tmp / "adapter.safetensors")
    held = {
        "base": {d: round(mean_loss(plain, w), 4) for d, w in loss_windows.items()},
        "base_with_adapter": {d: round(mean_loss(with_adapter, w), 4) for d, w in loss_windows.items()},
    }
    log(f"held-out loss: {held}")
    return {
        "fixture_version": FIXTURE_VERSION,
        "spec": asdict(spec),
        "python": sys.version.split()[0],
        "corpus": {
            "stdlib": "sysconfig.get_paths()['stdlib']",
            "files": corpus.files,
            "sha256": corpus.sha256,
            "characters": corpus.chars(),
            "tokens": tokens,
        },
        "tokenizer_seconds": round(tokenizer_s, 1),
        "base": base_info,
        "adapter": adapter_info,
        "held_out_loss": held,
        "held_out_loss_windows": {"per_domain": spec.loss_windows, "tokens": spec.seq + 1},
        "build_seconds": round(time.perf_counter() - start, 1),
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="the tiny fixture")
    args = ap.parse_args(argv)
    fx = fixture("quick" if args.quick else "full")
    print(json.dumps({"folder": str(fx.folder), **fx.info}, indent=2))


if __name__ == "__main__":
    main()
