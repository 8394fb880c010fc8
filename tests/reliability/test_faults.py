"""Faults on every write path: the destination is the old complete output or the new complete
one, never a partial file, and temps are cleaned wherever the process survives to clean them.

Disk full is simulated with ``RLIMIT_FSIZE`` in a subprocess: the N-th byte written fails with
``EFBIG`` (SIGXFSZ ignored), for many N — exactly what a full disk does to a writer.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from adaptkit import load_adapter, save_adapter
from tests.helpers.adapters import make_adapter

SCRIPT = r"""
import contextlib, hashlib, io, json, os, random, resource, signal, sys, traceback
from pathlib import Path

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
job = json.loads(sys.argv[1])
out, cwd = Path(job["out"]), Path(job["cwd"])
_, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
from adaptkit.cli import main


def tree():
    files = [out] if out.is_file() else sorted(out.rglob("*")) if out.is_dir() else []
    digest = {f: hashlib.sha256(f.read_bytes()).hexdigest() for f in files if f.is_file()}
    return {f.relative_to(out).as_posix(): d for f, d in digest.items()}


def run(limit):
    err = io.StringIO()
    # Only the soft limit: the next run raises it back (no privilege needed).
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit or hard, hard))
    try:
        with contextlib.redirect_stderr(err):
            code = main(job["args"])
    except BaseException:
        code, _ = -1, err.write(traceback.format_exc())
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
    temps = [n for n in os.listdir(cwd) if n.startswith(".") and (".tmp" in n or ".old" in n)]
    record = {"limit": limit, "code": code, "stderr": err.getvalue(), "tree": tree(), "temps": sorted(temps)}
    print(json.dumps(record), flush=True)


run(0)
# Below the largest file's size, so every limited run must fail somewhere.
largest = max(p.stat().st_size for p in ([out] if out.is_file() else out.rglob("*")) if p.is_file())
rng = random.Random(job["seed"])
for limit in sorted({*job["fixed"], *(rng.randrange(1, largest) for _ in range(job["extra"]))}):
    run(limit)
"""


def disk_full_runs(args, out, cwd, *, seed, fixed, extra):
    """Run ``adaptkit ARGS`` once unlimited, then with the file-size limit at each of ``fixed``
    and ``extra`` random byte counts below the largest output file's size, in one process (the
    CLI's imports dominate a tiny run).

    Returns one record per run: ``limit``, ``code``, ``stderr``, the output ``tree`` (relative
    path → sha256) and the ``temps`` left in ``cwd`` afterwards."""
    job = {"args": [str(a) for a in args], "out": str(out), "cwd": str(cwd), "seed": seed}
    job |= {"fixed": sorted(fixed), "extra": extra}
    res = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(job)], cwd=cwd, capture_output=True, text=True, timeout=600
    )
    assert res.returncode == 0, res.stderr[-2000:]
    return [json.loads(line) for line in res.stdout.splitlines() if line.startswith('{"limit"')]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    from tests.helpers.models import tiny_llama

    tmp = tmp_path_factory.mktemp("faults")
    save_adapter(
        make_adapter(1, shapes={"model.layers.0.self_attn.q_proj": (32, 32, 4)}), tmp / "a.safetensors"
    )
    save_adapter(
        make_adapter(2, shapes={"model.layers.0.self_attn.q_proj": (32, 32, 2)}), tmp / "b.safetensors"
    )
    tiny_llama().save_pretrained(tmp / "base", safe_serialization=True)
    return tmp


def leftovers(folder):
    return sorted(
        p.name for p in folder.iterdir() if p.name.startswith(".") and (".tmp" in p.name or ".old" in p.name)
    )


def _export(t, kind, out):
    return ["export", kind, "--model", t / "base", "-a", t / "a.safetensors", "-o", out, "--force"]


WRITERS = {
    "combine": lambda t, out: ["combine", t / "a.safetensors", t / "b.safetensors", "-o", out, "--force"],
    "convert-peft": lambda t, out: ["convert", t / "a.safetensors", "-o", out, "--to", "peft", "--force"],
    "export-onnx": lambda t, out: [*_export(t, "--onnx", out), "--no-verify"],
    "export-merged": lambda t, out: _export(t, "--merged", out),
}


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_disk_full_at_many_points(inputs, tmp_path, writer):
    out = tmp_path / ("out.safetensors" if writer == "combine" else "out")
    # An ONNX export takes seconds per run: one point for it (the suite stays under budget).
    fixed, extra = (set(), 1) if writer == "export-onnx" else ({1, 8, 100}, 4)
    first, *limited = disk_full_runs(
        WRITERS[writer](inputs, out), out, tmp_path, seed=writer, fixed=fixed, extra=extra
    )
    assert first["code"] == 0 and first["tree"], first["stderr"][-1500:]
    assert len(limited) >= max(len(fixed), 1)
    for res in limited:  # every limit lies below the largest file: every run must fail
        assert res["code"] == 2, res["stderr"][-1500:]
        lines = res["stderr"].strip().splitlines()
        assert lines[-1].startswith("error: ") and "Traceback" not in res["stderr"], res["stderr"][-1500:]
        assert res["tree"] == first["tree"], f"output changed after a failed write at byte {res['limit']}"
        assert res["temps"] == []


def test_sigkill_never_leaves_a_partial_output(inputs, tmp_path):
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"old complete output")
    cmd = [sys.executable, "-m", "adaptkit", *map(str, WRITERS["combine"](inputs, out))]
    rng = random.Random(0)
    for _ in range(6):
        proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.2, 2.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        data = out.read_bytes()
        if data != b"old complete output":
            assert load_adapter(out).targets  # the new output, complete
            out.write_bytes(b"old complete output")


def _big_model(folder, n=24, size=2048):
    """A 384 MiB base: writing (and fsyncing) it takes long enough to be interrupted reliably."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}')
    save_file(
        {f"model.layers.{i}.mlp.up_proj.weight": torch.full((size, size), 0.01 * i) for i in range(n)},
        folder / "model.safetensors",
    )
    adapter = make_adapter(shapes={"model.layers.3.mlp.up_proj": (size, size, 4)})
    return save_adapter(adapter, folder.parent / "big-a.safetensors")


@pytest.mark.parametrize(
    ("sig", "code", "message"),
    [
        (signal.SIGINT, 130, "error: interrupted"),
        (signal.SIGTERM, 143, "error: terminated (SIGTERM); nothing was written"),
        (signal.SIGHUP, 129, "error: terminated (SIGHUP); nothing was written"),
    ],
    ids=["ctrl-c", "sigterm", "sighup"],
)
def test_ctrl_c_mid_write_cleans_temps(tmp_path, sig, code, message):
    adapter = _big_model(tmp_path / "big")
    out = tmp_path / "merged"
    cmd = [
        sys.executable,
        "-m",
        "adaptkit",
        "export",
        "--merged",
        "--model",
        str(tmp_path / "big"),
        "-a",
        str(adapter),
        "-o",
        str(out),
        "--force",
    ]
    interrupted = 0
    for _ in range(5):  # the write can finish before the signal lands; try until one interrupts it
        existed = out.exists()
        # A background job (like CI's) inherits SIGINT *ignored*, and Python then installs no
        # KeyboardInterrupt handler: give the child the default disposition, as a terminal would.
        proc = subprocess.Popen(
            cmd,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        deadline = time.time() + 120
        while not leftovers(tmp_path) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.001)  # wait until the temp output folder exists: we are mid-write
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
        if proc.returncode == code:
            interrupted += 1
            assert err.strip().splitlines()[-1] == message
            assert out.exists() == existed  # an earlier complete output survives; none appears
        else:  # finished first
            assert proc.returncode in (0, -sig), err[-2000:]
        if out.exists():  # whatever is there is complete
            size = (out / "model.safetensors").stat().st_size
            assert size == (tmp_path / "big" / "model.safetensors").stat().st_size
        assert leftovers(tmp_path) == []
        if interrupted:
            break
    assert interrupted, "no run was interrupted mid-write"


def test_concurrent_writers_leave_one_complete_output(inputs, tmp_path):
    out = tmp_path / "out.safetensors"
    cmds = [
        [sys.executable, "-m", "adaptkit", *map(str, WRITERS["combine"](inputs, out)), "-s", s]
        for s in ("linear", "cat")
    ]
    procs = [
        subprocess.Popen(c, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for c in cmds
    ]
    codes = [p.wait(timeout=300) for p in procs]
    assert codes == [0, 0]
    assert load_adapter(out).producer.component in ("strategy:linear", "strategy:cat")
    assert leftovers(tmp_path) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_destination(inputs, tmp_path, run_cli):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    code, _, err = run_cli(*WRITERS["combine"](inputs, ro / "x.safetensors"))
    assert code == 2 and "cannot write" in err


# VmHWM (KiB) is this process's own peak; ru_maxrss would keep the test runner's RSS inherited
# at fork, flooring both the idle and the measured figure at the runner's size.
PEAK_PROBE = (
    "import sys\nfrom adaptkit.cli import main\n"
    "rc = main(sys.argv[1:]) if len(sys.argv) > 1 else 0\n"
    "hwm = next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:'))\n"
    "print(rc, hwm)\n"
)


def extra_peak_mib(args, *, warm_imports):
    """Peak RSS of ``adaptkit ARGS`` in a fresh process, minus that of an idle process that
    only imports ``warm_imports``: what the command itself needed. Returns (exit code, MiB, stderr)."""
    idle = subprocess.run(
        [sys.executable, "-c", f"import {warm_imports}\n" + PEAK_PROBE],
        capture_output=True,
        text=True,
        check=True,
    )
    run = subprocess.run([sys.executable, "-c", PEAK_PROBE, *map(str, args)], capture_output=True, text=True)
    rc, peak = run.stdout.split()[-2:] if run.stdout.strip() else ("?", "0")
    return rc, (int(peak) - int(idle.stdout.split()[-1])) / 1024, run.stderr


def test_merged_export_streams_tensor_by_tensor(tmp_path):
    """Peak RSS of `export --merged` grows with the largest tensor, not with the model: the same
    export of a 384 MiB model and of a 16 MiB one (one tensor of the same shape) differ by far
    less than the model. Comparing two exports, not an export and an idle process, leaves out
    what every export loads whatever the model (torch, transformers, the plugins)."""
    import torch
    from safetensors.torch import save_file

    adapter = make_adapter(shapes={"model.layers.0.mlp.up_proj": (4096, 1024, 4)})
    save_adapter(adapter, tmp_path / "a.safetensors")
    peaks = {}
    for name, layers in (("small", 1), ("big", 24)):  # 16 MiB, 384 MiB
        model = tmp_path / name
        model.mkdir()
        # Loose tensors, not a whole Llama: a model type transformers does not know is baked by
        # tensor shapes (a known one must match its config in full), so no square weights.
        (model / "config.json").write_text('{"model_type": "toy"}')
        tensors = {f"model.layers.{i}.mlp.up_proj.weight": torch.randn(4096, 1024) for i in range(layers)}
        save_file(tensors, model / "model.safetensors")
        del tensors
        rc, peaks[name], err = extra_peak_mib(
            [
                "export",
                "--merged",
                "--model",
                model,
                "-a",
                tmp_path / "a.safetensors",
                "-o",
                tmp_path / f"out-{name}",
            ],
            warm_imports="torch",
        )
        assert rc == "0", err[-2000:]
    grown = peaks["big"] - peaks["small"]
    assert grown < 384 / 3, f"a 368 MiB larger model made the export's peak {grown:.0f} MiB larger ({peaks})"


def test_combining_many_adapters_stays_within_the_factors(tmp_path):
    """24 adapters over 8 targets of 4096×4096: memory follows the factors (~50 MiB), not m×n
    (one dense ΔW is 64 MiB; all inputs' would be 1.5 GiB)."""
    import torch

    from adaptkit import Adapter, LoraPair

    g = torch.Generator().manual_seed(0)
    paths = []
    for i in range(24):
        targets = {
            f"model.layers.{t}.mlp.up_proj": LoraPair(
                torch.randn(8, 4096, generator=g), torch.randn(4096, 8, generator=g), alpha=16.0
            )
            for t in range(8)
        }
        paths.append(str(save_adapter(Adapter(targets), tmp_path / f"a{i}.safetensors")))
    factor_mib = sum(os.path.getsize(p) for p in paths) / 2**20
    rc, extra_mib, err = extra_peak_mib(
        ["combine", *paths, "-r", "16", "-o", tmp_path / "out.safetensors"],
        warm_imports="torch, safetensors, adaptkit_strategies",
    )
    assert rc == "0", err[-2000:]
    assert extra_mib < 2 * factor_mib + 64, (extra_mib, factor_mib)


def test_read_only_destination_simulated(inputs, tmp_path, run_cli, monkeypatch):
    """As root (CI) permissions are not enforced, so the OS refusal is injected where the
    writers create their temp file/folder: the same error path as a read-only directory."""
    import errno
    import tempfile

    def refuse(*_a, **_k):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    for writer in ("combine", "convert-peft", "export-merged"):
        out = tmp_path / ("ro.safetensors" if writer == "combine" else "ro")
        code, _, err = run_cli(*WRITERS[writer](inputs, out))
        assert code == 2 and "cannot write the output (Permission denied)" in err, err
        assert not out.exists()


def test_temps_of_dead_writers_are_swept_by_the_next_write(inputs, tmp_path, run_cli):
    """A writer killed with SIGKILL leaves its temp; the next write to that output removes it,
    but never a live writer's temp, nor the only copy of an output whose swap was cut short."""
    a, b = inputs / "a.safetensors", inputs / "b.safetensors"
    out = tmp_path / "ab.safetensors"
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(gone.stdout)  # that process has exited
    stale = tmp_path / f".ab.safetensors.{dead_pid}.x1y2.tmp"
    stale.write_bytes(b"half a file")
    stale_dir = tmp_path / f".ab.safetensors.{dead_pid}.z3.tmp"
    stale_dir.mkdir()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        busy = tmp_path / f".ab.safetensors.{live.pid}.w4.tmp"
        busy.write_bytes(b"being written")
        code, _, err = run_cli("combine", a, b, "-o", out)
        assert code == 0, err
        assert not stale.exists() and not stale_dir.exists() and busy.exists()
    finally:
        live.kill()
        live.wait()
    orphan = tmp_path / f".gone.safetensors.{dead_pid}.q.old"
    orphan.mkdir()
    from adaptkit.io.atomic import sweep_stale_temps

    assert sweep_stale_temps(tmp_path / "gone.safetensors") == [] and orphan.exists()
