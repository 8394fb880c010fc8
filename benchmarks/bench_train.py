"""adaptkit's ``lora`` backend vs PEFT, training the same model in one process.

Same Llama-shaped model (built from a config, random weights), same LoRA targets
(all linear layers but the head), rank, alpha, identical initial factors, same AdamW and the
same batches. Steps alternate between the two (so load and thermal drift hit both equally);
the median step time and the peak extra RSS of each are reported as ratios, and the first
losses are compared (they should agree to float precision: it is the same math).

    python -m benchmarks.bench_train            # hidden 512, 4 layers, batch 8 x 256
    python -m benchmarks.bench_train --quick
"""

from __future__ import annotations

import copy
import statistics
import time

import torch

from benchmarks.common import emit, mib, parser, peak_rss, release_memory, run_info


def build(hidden, layers, vocab):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=(hidden * 8 // 3 + 63) // 64 * 64,  # a multiple of the NF4 blocksize
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64),
        num_key_value_heads=max(1, hidden // 128),
        max_position_embeddings=1024,
    )
    return LlamaForCausalLM(cfg)


def setups(base, rank, alpha, lr):
    from peft import LoraConfig, get_peft_model

    from adaptkit import nn as lora

    ours = copy.deepcopy(base)
    lora.attach(ours, lora.LoraSettings(targets="all-linear", rank=rank, alpha=alpha))
    peft = get_peft_model(
        copy.deepcopy(base), LoraConfig(r=rank, lora_alpha=alpha, target_modules="all-linear")
    )
    copy_factors(peft, {n: (m.lora_A, m.lora_B) for n, m in lora.lora_layers(ours).items()})
    opt_ours = torch.optim.AdamW(lora.trainable_parameters(ours), lr=lr)
    opt_peft = torch.optim.AdamW([p for p in peft.parameters() if p.requires_grad], lr=lr)
    assert sum(p.numel() for g in opt_ours.param_groups for p in g["params"]) == sum(
        p.numel() for g in opt_peft.param_groups for p in g["params"]
    )
    return (ours.train(), opt_ours), (peft.train(), opt_peft)


def copy_factors(peft, factors):
    """Give PEFT's LoRA layers adaptkit's factors (``factors``: target -> (A, B)), so that both
    start from identical factors."""
    with torch.no_grad():
        for name, (A, B) in factors.items():
            target = peft.base_model.model.get_submodule(name)
            target.lora_A["default"].weight.copy_(A)
            target.lora_B["default"].weight.copy_(B)


def race(runs, batches):
    """Training steps of every run (``{name: (model, optimizer)}``) alternating over ``batches``,
    so that load and thermal drift hit all equally. Returns the losses, the step times (the
    first step, where optimizer state appears, untimed) and the steady-state peak extra RSS of
    one step of each."""
    losses = {name: [step(model, opt, batches[0])] for name, (model, opt) in runs.items()}
    # Steady-state peak of one step (activations + gradients), measured in both orders and the
    # smaller kept, so neither tool pays for the allocator state the other left behind.
    peaks: dict[str, int] = {}
    for order in (list(runs), list(reversed(runs))):
        for name in order:
            model, opt = runs[name]
            with peak_rss() as peak:
                step(model, opt, batches[1])
            peaks[name] = min(peaks.get(name, peak.bytes), peak.bytes)
    times = {name: [] for name in runs}
    for ids in batches[1:]:
        for name, (model, opt) in runs.items():
            t = time.perf_counter()
            losses[name].append(step(model, opt, ids))
            times[name].append(time.perf_counter() - t)
    return losses, times, peaks


def compared(losses, times, peaks):
    """The result fields adaptkit vs PEFT share: median step times, peaks, their ratios, losses."""
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "step_s": {k: round(v, 4) for k, v in med.items()},
        "step_time_ratio_adaptkit_over_peft": round(med["adaptkit"] / med["peft"], 3),
        "peak_extra_rss_mib": {k: round(mib(v), 1) for k, v in peaks.items()},
        "peak_rss_ratio_adaptkit_over_peft": round(peaks["adaptkit"] / max(peaks["peft"], 1), 3),
        "max_loss_difference_first_5_steps": max(
            abs(a - b) for a, b in zip(losses["adaptkit"][:5], losses["peft"][:5], strict=True)
        ),
        "losses": {k: [round(x, 5) for x in v] for k, v in losses.items()},
    }


def step(model, opt, ids):
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss)


def main(argv=None):
    args = parser(__doc__).parse_args(argv)
    hidden, layers, batch, seq, steps = (256, 2, 4, 128, 8) if args.quick else (512, 4, 8, 256, 20)
    vocab, rank, alpha, lr = 2048, 16, 32, 1e-3
    base = build(hidden, layers, vocab)
    g = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, vocab, (batch, seq), generator=g) for _ in range(steps)]
    (ours, opt_o), (peft, opt_p) = setups(base, rank, alpha, lr)
    del base
    release_memory()

    losses, times, peaks = race({"adaptkit": (ours, opt_o), "peft": (peft, opt_p)}, batches)
    med = {k: statistics.median(v) for k, v in times.items()}
    tokens = batch * seq
    emit(
        "train",
        {
            **run_info(args.quick, "adaptkit", "peft", "torch", "transformers"),
            "model": {
                "hidden": hidden,
                "layers": layers,
                "vocab": vocab,
                "params": sum(p.numel() for p in ours.parameters()),
            },
            "batch": [batch, seq],
            "rank": rank,
            "steps_timed": steps - 1,
            "tokens_per_s": {k: round(tokens / v) for k, v in med.items()},
            **compared(losses, times, peaks),
        },
        args.json,
    )


if __name__ == "__main__":
    main()
