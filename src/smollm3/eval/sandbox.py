"""Run untrusted (model-generated) Python in a separate, resource-limited, isolated process.

    result = run_program("assert 1 + 1 == 2", timeout=5.0)   # -> SandboxResult(status="passed", ...)

A program passes only when it runs to its end: a small runner executes it and then writes a random nonce, which it
read from a pipe before the program started, to a file the program is not told about. `os._exit(0)`,
`raise SystemExit(0)` or an atexit hook that exits 0 after a failed assertion end the process with status 0 but
never reach the nonce, so they score 0 (issue 26: each passed any HumanEval problem).

Isolation, the strongest this machine allows (`isolation="auto"`; `SandboxResult.isolation` says which ran):
  - "namespaces" (util-linux `unshare` permitted: as root, or as a user where unprivileged user namespaces are on):
    new PID, mount and network namespaces. The program is PID 1 of its own PID namespace, so it sees no other
    process (/proc is remounted), cannot name the evaluator to signal it or read its /proc/<pid>/environ, and every
    process it starts, `setsid` or not, dies with it (the kernel kills a PID namespace with its init; the evaluator
    kills that init at the timeout). The network namespace has only a loopback device, down: no network. tmpfs is
    mounted over the home directories (/root, /home, $HOME), the evaluator's working directory and the smollm3
    source checkout, with only the Python installation bound back, so the project's and the user's files are not
    there. As root the program then runs as a fresh, unused uid (no capabilities, no_new_privs, RLIMIT_NPROC
    binding: no fork at all by default), so it cannot undo the mounts or write root's files. Unprivileged, it keeps
    the invoking user's uid with an empty capability bounding set (it cannot unmount either); RLIMIT_NPROC counts
    all of that user's processes, so forks fail as before.
  - "process" (no namespaces): `python -I` with an empty environment in its own session, killed as a group at the
    timeout. What is NOT isolated here: the network; every file the evaluator's user can read or write; as the
    same user, /proc/<evaluator>/environ and signals to the evaluator. As root, the program runs as a fresh uid
    where the Python installation is readable by other users (this closes the environ and signal holes and makes
    RLIMIT_NPROC bind, so no process can escape the group kill); otherwise as root, where RLIMIT_NPROC does not
    bind and a `setsid` grandchild can outlive the run.
Both: rlimits on address space (a memory bomb gets MemoryError), CPU seconds (SIGXCPU, then SIGKILL), file size
(SIGXFSZ), processes and core files; a fresh working directory, deleted afterwards; stdin at EOF; stdout and stderr
to files (a program printing forever cannot fill the evaluator's memory). Always open: world-readable files outside
the hidden directories (/etc, /usr, /tmp...), and writes to world-writable places such as /tmp. The nonce stops exit
tricks, not a program that searches the interpreter's memory for it. This is the HumanEval threat model (careless
or gamed code), not a container for a determined attacker.
"""

from __future__ import annotations

import functools
import json
import os
import resource
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

OUTPUT_TAIL = 2000  # characters of stderr kept in the result
ISOLATIONS = ("auto", "namespaces", "process")
SYSTEM_DIRS = ("/usr", "/lib", "/lib32", "/lib64", "/bin", "/sbin", "/etc", "/proc", "/sys", "/dev", "/run", "/var",
               "/tmp", "/opt", "/nix", "/snap")
KERNEL_DIRS = ("/proc", "/sys", "/dev", "/run")
UNSHARE = ["unshare", "--net", "--mount", "--pid", "--fork", "--mount-proc", "--kill-child"]

# Executes the program, then writes the nonce it read from stdin (before the program could) to fd argv[1]. stdin is
# pointed at /dev/null first, so the program reads EOF as it did before the runner existed.
RUNNER = """\
import os, sys
def _run():
    nonce = sys.stdin.readline().strip().encode()
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    done, path = int(sys.argv[1]), sys.argv[2]
    sys.argv = sys.argv[2:]
    with open(path, encoding="utf-8") as f:
        code = compile(f.read(), path, "exec")
    exec(code, {"__name__": "__main__", "__file__": path, "__builtins__": __builtins__})
    os.write(done, nonce)
_run()
"""

# PID 1 of the new namespaces, still privileged there: hide directories, bind the interpreter back, limit processes,
# drop to the sandbox's uid (or, in a user namespace, every capability), then exec the runner.
SETUP = """\
import ctypes, json, os, resource, sys
cfg = json.loads(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
MS_NOSUID, MS_NODEV, MS_BIND, MS_REC = 2, 4, 4096, 16384
def mount(src, dst, fstype, flags, data):
    if libc.mount(src.encode(), dst.encode(), fstype and fstype.encode(), flags, data and data.encode()) != 0:
        err = ctypes.get_errno()
        raise OSError(err, "sandbox: mount " + dst + ": " + os.strerror(err))
for i, keep in enumerate(cfg["keep"]):
    mount(keep, cfg["stage"] + "/" + str(i), None, MS_BIND | MS_REC, None)
for d in cfg["hide"]:
    mount("tmpfs", d, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
for i, keep in enumerate(cfg["keep"]):
    os.makedirs(keep, exist_ok=True)
    mount(cfg["stage"] + "/" + str(i), keep, None, MS_BIND | MS_REC, None)
resource.setrlimit(resource.RLIMIT_NPROC, (cfg["nproc"], cfg["nproc"]))
os.chdir(cfg["work"])
if cfg["uid"] is not None:
    os.setgroups([])
    os.setgid(cfg["uid"])
    os.setuid(cfg["uid"])  # from root to an unused uid: every capability goes with it
else:
    for cap in range(64):  # in a user namespace: no capability survives the exec, so the mounts cannot be undone
        libc.prctl(24, cap, 0, 0, 0)  # PR_CAPBSET_DROP; EINVAL past the last capability is fine
libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS: no setuid binary gives privileges back
os.execv(cfg["argv"][0], cfg["argv"])
"""


@dataclass
class SandboxResult:
    status: str  # "passed" (ran to its end, exit 0) | "failed" (anything else but a timeout) | "timeout" (wall or CPU)
    returncode: int | None
    stderr: str  # the tail, for the samples file
    seconds: float
    isolation: str = "process"  # "namespaces" or "process": what this run had (the module docstring)

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def _interpreter() -> str:
    """The base interpreter (a venv's python is a link to it): -I needs nothing from the venv."""
    return os.path.realpath(sys.executable)


@functools.cache
def namespaces_available() -> bool:
    """Whether `unshare` may create the namespaces here (probed once: containers often forbid it)."""
    cmd = UNSHARE if os.geteuid() == 0 else [UNSHARE[0], "--user", "--map-root-user", *UNSHARE[1:]]
    try:
        return subprocess.run([*cmd, "--", _interpreter(), "-I", "-S", "-c", "pass"], stdin=subprocess.DEVNULL,
                              capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@functools.cache
def _process_uid_works() -> bool:
    """Root without namespaces: can another uid run the interpreter (is its installation readable by others)?"""
    if os.geteuid() != 0:
        return False
    try:
        return subprocess.run([_interpreter(), "-I", "-S", "-c", "pass"], stdin=subprocess.DEVNULL, cwd="/",
                              capture_output=True, timeout=30, preexec_fn=_drop_to(_fresh_uid())).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _fresh_uid() -> int:
    """An unused uid, one per run: its process count starts at 0 (RLIMIT_NPROC binds) and runs cannot signal each
    other. Drawn from 2**30..2**31-1, far above any system's users."""
    return (1 << 30) + secrets.randbelow(1 << 30)


def _drop_to(uid: int):
    def drop():
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)

    return drop


def _limits(memory_bytes: int, cpu_seconds: int, file_bytes: int, nproc: int | None, then=None):
    """preexec_fn: runs in the child between fork and exec, so the limits bind the untrusted program only."""

    def apply():
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_bytes, file_bytes))
        if nproc is not None:  # under namespaces the setup sets it, after unshare has forked
            resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a crash must not write a core file of up to 1 GiB
        if then is not None:
            then()

    return apply


def _tail(path: Path) -> str:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - OUTPUT_TAIL))
        return f.read().decode("utf-8", errors="replace")


def _inside(path: Path, parent: Path) -> bool:
    return path == parent or parent in path.parents


def _hidden_dirs(tmp: Path) -> list[str]:
    """Directories to cover with tmpfs: the homes, the evaluator's working directory and the smollm3 checkout;
    never the root, a system directory, or one holding the sandbox's own temporary directory."""
    candidates = [Path("/root"), Path("/home"), Path(os.environ.get("HOME", "/root")), Path.cwd()]
    checkout = Path(__file__).resolve().parents[3]  # src/smollm3/eval/sandbox.py in a source checkout
    if (checkout / "pyproject.toml").exists():
        candidates.append(checkout)
    chosen: list[Path] = []
    for d in sorted({c.resolve() for c in candidates if c.is_dir()}, key=lambda p: len(p.parts)):
        # never a system directory itself, nor anything in the kernel's file systems; a checkout or working
        # directory under /tmp, /opt or /var is covered like any other (CI clones live in such places)
        if d == Path("/") or str(d) in SYSTEM_DIRS or any(_inside(d, Path(s)) for s in KERNEL_DIRS) \
                or _inside(tmp, d):
            continue
        if not any(_inside(d, c) for c in chosen):  # inside one already covered: gone with it
            chosen.append(d)
    return [str(d) for d in chosen]


def _namespace_command(tmp: Path, work: Path, argv: list[str], nproc: int) -> tuple[list[str], int | None]:
    hide = _hidden_dirs(tmp)
    interpreter = Path(_interpreter())
    keeps = sorted({str(Path(sys.base_prefix).resolve()), str(interpreter.parent.parent)})
    keep = [k for k in keeps if any(_inside(Path(k), Path(h)) for h in hide)]
    stage = tmp / "stage"
    for i in range(len(keep)):
        (stage / str(i)).mkdir(parents=True)
    root = os.geteuid() == 0
    uid = _fresh_uid() if root else None
    if root:
        os.chown(work, uid, uid)
        os.chmod(tmp, 0o711)  # the fresh uid may pass through to its working directory, not list or read the rest
    cfg = {"keep": keep, "hide": hide, "stage": str(stage), "work": str(work), "uid": uid,
           "nproc": nproc + 1 if root else nproc,  # as the fresh uid the program itself is one process
           "argv": argv}
    prefix = UNSHARE if root else [UNSHARE[0], "--user", "--map-root-user", *UNSHARE[1:]]
    return [*prefix, "--", str(interpreter), "-I", "-S", "-c", SETUP, json.dumps(cfg)], uid


def _kill(proc: subprocess.Popen):
    """Kill what the run left: under namespaces the PID namespace's init (the child of `unshare`; its death takes
    every process of the namespace, whatever session they made), then the whole process group."""
    try:
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    except OSError:
        children = []
    for pid in children:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run_program(code: str, *, timeout: float = 10.0, memory_bytes: int = 1 << 30, cpu_seconds: int | None = None,
                file_bytes: int = 1 << 20, nproc: int = 0, isolation: str = "auto") -> SandboxResult:
    """Run `code` as a Python program in the sandbox; passed when it runs to its end and exits 0 within every
    limit. isolation: auto (namespaces where permitted, else process), namespaces (refused where not permitted),
    process."""
    if isolation not in ISOLATIONS:
        raise ValueError(f"isolation {isolation!r} is unknown; use one of {', '.join(ISOLATIONS)}")
    if isolation == "namespaces" and not namespaces_available():
        raise ValueError("isolation 'namespaces': this machine does not permit `unshare` (a container without "
                         "CAP_SYS_ADMIN and no unprivileged user namespaces); use isolation 'process'")
    use_ns = isolation == "namespaces" or (isolation == "auto" and namespaces_available())
    cpu = cpu_seconds if cpu_seconds is not None else max(1, int(timeout))
    nonce = secrets.token_hex(16)
    with tempfile.TemporaryDirectory(prefix="smollm3-sandbox-") as tmp:
        tmp = Path(tmp)
        work, logs = tmp / "work", tmp / "logs"
        work.mkdir()
        logs.mkdir()
        program = work / "program.py"
        program.write_text(code, encoding="utf-8")
        done = os.open(logs / "done", os.O_WRONLY | os.O_CREAT, 0o600)
        argv = [_interpreter(), "-I", "-c", RUNNER, str(done), str(program)]
        if use_ns:
            cmd, _ = _namespace_command(tmp, work, argv, nproc)
            preexec = _limits(memory_bytes, cpu, file_bytes, None)
        else:
            cmd = argv
            drop = None
            if _process_uid_works():
                uid = _fresh_uid()
                os.chown(work, uid, uid)
                os.chmod(tmp, 0o711)
                drop = _drop_to(uid)
            # after setuid the program itself counts against the fresh uid's limit (0 would refuse its exec)
            preexec = _limits(memory_bytes, cpu, file_bytes, nproc + 1 if drop else nproc, then=drop)
        t0 = time.perf_counter()
        try:
            with open(logs / "stdout", "wb") as out, open(logs / "stderr", "wb") as err:
                proc = subprocess.Popen(cmd, cwd=work, env={}, stdin=subprocess.PIPE, stdout=out, stderr=err,
                                        start_new_session=True, close_fds=True, pass_fds=(done,),
                                        preexec_fn=preexec)
                try:
                    proc.stdin.write(nonce.encode() + b"\n")
                    proc.stdin.close()
                except BrokenPipeError:  # it died before reading: its exit status says why
                    pass
                try:
                    rc = proc.wait(timeout=timeout)
                    # killed at the CPU limit (SIGXCPU, then SIGKILL from the hard limit) is a timeout too
                    status = "timeout" if rc in (-signal.SIGXCPU, -signal.SIGKILL) else "failed"
                except subprocess.TimeoutExpired:
                    rc, status = None, "timeout"
                finally:
                    _kill(proc)  # anything the program started dies with it
                    proc.wait()
        finally:
            os.close(done)
        finished = (logs / "done").read_bytes() == nonce.encode()
        if rc == 0 and finished:
            status = "passed"
        stderr = _tail(logs / "stderr")
        if rc == 0 and not finished:
            stderr += "\n[sandbox] exited with status 0 before the program ran to its end (exit, os._exit or " \
                      "SystemExit): not a pass\n"
        return SandboxResult(status, rc, stderr, time.perf_counter() - t0, "namespaces" if use_ns else "process")
