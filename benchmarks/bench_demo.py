"""The demo table as a fresh machine reproduces it: 3 seeds, every row, tuning time.

Runs ``adaptkit demo --seed S`` for S = 0, 1, 2 with an empty cache folder
(``ADAPTKIT_CACHE``), so the base model is pre-trained from scratch exactly as on a new
machine, then reports each row's held-out exact-match accuracy (mean, min and max over the
seeds) and the time tuning took. Two variants: the demo as it ships (each adapter trained on
its own skill only) and ``--replay`` (each also trained to leave the other skill's inputs
alone).

    python -m benchmarks.bench_demo            # 3 seeds x 2 variants, full demo
    python -m benchmarks.bench_demo --quick    # 1 seed, --quick demo, no --replay
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import emit, parser, run_info

STATIC = ("linear", "cat", "svd", "ties", "dare_ties")


def _variant(seeds: list[int], flags: list[str], cache: str, quick: bool) -> dict:
    runs = []
    env = {**os.environ, "ADAPTKIT_CACHE": cache}
    for seed in seeds:
        out = Path(cache) / f"demo-{'-'.join(flags) or 'default'}-{seed}"
        cmd = [sys.executable, "-m", "adaptkit", "demo", "-o", str(out), "--seed", str(seed), "--json"]
        cmd += [*flags, "--quick"] if quick else flags
        res = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if res.returncode != 0:
            raise SystemExit(res.stderr[-3000:])
        data = json.loads((out / "results.json").read_text())
        runs.append({"seed": seed, "accuracy": data["accuracy"], "seconds": data["seconds"]})
        print(flags, seed, json.dumps(data["accuracy"]), flush=True)
    rows = {}
    for name in runs[0]["accuracy"]:
        per = {skill: [r["accuracy"][name][skill] for r in runs] for skill in runs[0]["accuracy"][name]}
        worst = [min(r["accuracy"][name].values()) for r in runs]
        rows[name] = {
            **{
                skill: {"mean": statistics.fmean(v), "min": min(v), "max": max(v)} for skill, v in per.items()
            },
            "worst_skill": {"mean": statistics.fmean(worst), "min": min(worst), "max": max(worst)},
        }
    per_seed = []
    for r in runs:
        acc = r["accuracy"]
        best = max(STATIC, key=lambda n: min(acc[n].values()))
        tuned = min(acc["tuned"].values())
        per_seed.append(
            {
                "seed": r["seed"],
                "best_static": best,
                "tuned_minus_best_static": tuned - min(acc[best].values()),
                "tuned_over_weaker_solo": tuned / min(acc["A"]["upper"], acc["B"]["digits"]),
            }
        )
    return {
        "rows": rows,
        "best_static": max(STATIC, key=lambda n: rows[n]["worst_skill"]["mean"]),
        "per_seed": per_seed,
        "tune_seconds": [round(r["seconds"]["tune"], 2) for r in runs],
        "demo_seconds": [round(r["seconds"]["total"], 1) for r in runs],
        "runs": runs,
    }


def main(argv=None) -> None:
    args = parser(__doc__).parse_args(argv)
    seeds = [0] if args.quick else [0, 1, 2]
    variants = {"independent": []} if args.quick else {"independent": [], "replay": ["--replay"]}
    with tempfile.TemporaryDirectory() as cache:
        results = {name: _variant(seeds, flags, cache, args.quick) for name, flags in variants.items()}
    emit(
        "demo",
        {
            **run_info(args.quick, "adaptkit", "torch", "transformers"),
            "seeds": seeds,
            "variants": results,
        },
        args.json,
    )


if __name__ == "__main__":
    main()
