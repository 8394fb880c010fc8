"""Run every benchmark and regenerate docs/benchmarks.md.

    python -m benchmarks            # full sizes (about 40 minutes on 2 cores, plus the quality
                                    # fixture's training the first time: benchmarks/quality_model.py)
    python -m benchmarks --quick    # small sizes (a few minutes)
    python -m benchmarks --only combine,train

Each benchmark runs in its own process (so one's memory does not inflate another's), writes
``benchmarks/results/<name>.json``, and the tables in docs/benchmarks.md are rebuilt from all
result files present.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from benchmarks.report import render

HERE = Path(__file__).resolve().parent
BENCHES = (
    "combine", "train", "export", "qlora", "loraplus", "realsize", "shard", "generation", "quality",
    "llamacpp", "demo",
)  # fmt: skip


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", help="comma-separated subset of: " + ", ".join(BENCHES))
    args = ap.parse_args(argv)
    chosen = args.only.split(",") if args.only else list(BENCHES)
    (HERE / "results").mkdir(exist_ok=True)
    failed = []
    for name in chosen:
        script = HERE / f"bench_{name}.py"
        if not script.exists():
            print(f"skip {name}: {script.name} not found", file=sys.stderr)
            continue
        cmd = [
            sys.executable,
            "-m",
            f"benchmarks.bench_{name}",
            "--json",
            str(HERE / "results" / f"{name}.json"),
        ]
        if args.quick:
            cmd.append("--quick")
        print("$", " ".join(cmd[1:]), file=sys.stderr, flush=True)
        if subprocess.run(cmd, cwd=HERE.parent, stdout=subprocess.DEVNULL).returncode != 0:
            failed.append(name)
    doc = HERE.parent / "docs" / "benchmarks.md"
    doc.write_text(render(HERE / "results"))
    print(f"wrote {doc}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
