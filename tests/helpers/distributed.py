"""``adaptkit`` commands run for real across processes: ``torchrun`` (gloo on CPU) and one
process alike, each a fresh interpreter with one thread, so 2 processes fit 2 cores."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

#: Runs several commands in one launch (see its docstring).
RUN_COMMANDS = Path(__file__).with_name("run_commands.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(argv: list[str], timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        argv, capture_output=True, text=True, env=env, timeout=timeout, stdin=subprocess.DEVNULL
    )


def adaptkit(*args, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m adaptkit ARGS`` in one process."""
    return _run([sys.executable, "-m", "adaptkit", *map(str, args)], timeout)


def torchrun(*commands: list, nproc: int = 2, timeout: float = 300) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node NPROC -m adaptkit ARGS`` for one command (a list of
    arguments); several commands run one after another in the same launch
    (:data:`RUN_COMMANDS`), each a whole ``adaptkit`` run."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc)]
    launcher += ["--master_port", str(free_port())]
    if len(commands) == 1:
        argv = [*launcher, "-m", "adaptkit", *map(str, commands[0])]
    else:
        argv = [*launcher, str(RUN_COMMANDS), *(json.dumps([str(a) for a in c]) for c in commands)]
    return _run(argv, timeout)
