"""Run untrusted (model-generated) Python in a separate, resource-limited process.

    result = run_program("assert 1 + 1 == 2", timeout=5.0)   # -> SandboxResult(status="passed", ...)

What the child gets, and why:
  - `python -I` (isolated mode: no PYTHON* variables, no user site-packages, no script dir on sys.path) and an empty
    environment, so it sees none of the parent's variables (tokens, keys) and cannot be steered by them;
  - a fresh temporary directory as its working directory, deleted afterwards;
  - rlimits set in the child before exec: address space (a memory bomb gets MemoryError instead of taking the
    machine), CPU seconds (soft limit SIGXCPU, hard limit SIGKILL one second later), file size (a runaway write gets
    SIGXFSZ), processes (no fork bombs; note the kernel ignores RLIMIT_NPROC for root, so run evaluations as an
    ordinary user where that matters: the time limit still kills the whole process group);
  - its own session/process group, killed as a whole at the wall-clock timeout (sleeps and blocked reads burn no
    CPU, so RLIMIT_CPU alone cannot stop them);
  - stdin closed; stdout and stderr go to files (subject to the same file-size limit), so a program printing
    forever cannot fill the parent's memory through a pipe.
This is process isolation, not a security boundary like a container: it stops accidents and careless code (the
HumanEval threat model), not a determined attacker with network or filesystem intent.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

OUTPUT_TAIL = 2000  # characters of stderr kept in the result


@dataclass
class SandboxResult:
    status: str  # "passed" (exit 0) | "failed" (nonzero exit, a memory or file limit) | "timeout" (wall or CPU)
    returncode: int | None
    stderr: str  # the tail, for the samples file
    seconds: float

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def _limits(memory_bytes: int, cpu_seconds: int, file_bytes: int, nproc: int):
    """preexec_fn: runs in the child between fork and exec, so the limits bind the untrusted program only."""

    def apply():
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_bytes, file_bytes))
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a crash must not write a core file of up to 1 GiB

    return apply


def _tail(path: Path) -> str:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - OUTPUT_TAIL))
        return f.read().decode("utf-8", errors="replace")


def run_program(code: str, *, timeout: float = 10.0, memory_bytes: int = 1 << 30, cpu_seconds: int | None = None,
                file_bytes: int = 1 << 20, nproc: int = 0) -> SandboxResult:
    """Run `code` as a Python program in the sandbox; passed when it exits 0 within every limit."""
    cpu = cpu_seconds if cpu_seconds is not None else max(1, int(timeout))
    with tempfile.TemporaryDirectory(prefix="smollm3-sandbox-") as tmp:
        work, logs = Path(tmp) / "work", Path(tmp) / "logs"
        work.mkdir()
        logs.mkdir()
        program = work / "program.py"
        program.write_text(code, encoding="utf-8")
        t0 = time.perf_counter()
        with open(logs / "stdout", "wb") as out, open(logs / "stderr", "wb") as err:
            proc = subprocess.Popen([sys.executable, "-I", str(program)], cwd=work, env={}, stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=err, start_new_session=True, close_fds=True,
                                    preexec_fn=_limits(memory_bytes, cpu, file_bytes, nproc))
            try:
                rc = proc.wait(timeout=timeout)
                # killed at the CPU limit (SIGXCPU, then SIGKILL from the hard limit) is a timeout too
                status = "passed" if rc == 0 else "timeout" if rc in (-signal.SIGXCPU, -signal.SIGKILL) else "failed"
            except subprocess.TimeoutExpired:
                rc, status = None, "timeout"
            finally:
                try:  # the whole group: anything the program started dies with it
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
        return SandboxResult(status, rc, _tail(logs / "stderr"), time.perf_counter() - t0)
