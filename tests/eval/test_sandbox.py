"""The sandbox against the completions a hostile user wrote (issue 26): exit tricks score 0 under every isolation;
under namespaces (root here, where `unshare` is permitted) the evaluator's environment, files and process are out of
reach, nothing outlives the run and there is no network."""

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from smollm3.eval.sandbox import namespaces_available, run_program

REPO = Path(__file__).resolve().parents[2]
SANDBOX = REPO / "src" / "smollm3" / "eval" / "sandbox.py"
ISOLATIONS = ["process", pytest.param("namespaces", marks=pytest.mark.skipif(
    not namespaces_available(), reason="this machine does not permit unshare"))]
needs_namespaces = pytest.mark.skipif(not namespaces_available(), reason="this machine does not permit unshare")

TRICKS = {  # each fails its assertion but used to end with status 0, which counted as a pass
    "os._exit": "def f():\n    import os\n    os._exit(0)\nassert f() == 1\n",
    "SystemExit": "def f():\n    raise SystemExit(0)\nassert f() == 1\n",
    "sys.exit": "import sys\nsys.exit(0)\nassert False\n",
    "atexit": "import atexit, os\natexit.register(os._exit, 0)\nassert False, 'wrong'\n",
}


@pytest.mark.parametrize("isolation", ISOLATIONS)
@pytest.mark.parametrize("trick", list(TRICKS))
def test_exit_tricks_score_zero(isolation, trick):
    r = run_program(TRICKS[trick], timeout=5.0, isolation=isolation)
    assert r.status == "failed" and not r.passed and r.isolation == isolation, r
    if trick != "atexit":
        assert r.returncode == 0 and "before the program ran to its end" in r.stderr
    ok = run_program("import sys\nassert sum([1, 2]) == 3\nprint('done', file=sys.stderr)\n", timeout=5.0,
                     isolation=isolation)
    assert ok.passed and "done" in ok.stderr, ok


def _evaluate(program: str, tmp_path, env: dict, marker: str = "") -> subprocess.CompletedProcess:
    """Run `program` through run_program in an evaluator process of its own, started with `env`: what the old
    sandbox leaked (/proc/<pid>/environ holds a process's environment as it started) and could kill (its parent)
    is then this helper, not the test run."""
    evaluator = textwrap.dedent(f"""\
        import importlib.util, sys
        spec = importlib.util.spec_from_file_location("sandbox", {str(SANDBOX)!r})
        sandbox = sys.modules["sandbox"] = importlib.util.module_from_spec(spec)  # stdlib only: no torch to import
        spec.loader.exec_module(sandbox)
        r = sandbox.run_program(open(sys.argv[1]).read(), timeout=10.0)
        print("evaluator alive:", r.status, r.isolation)
        print(r.stderr, file=sys.stderr)
        """)
    path = tmp_path / "program.py"
    path.write_text(program)
    return subprocess.run([sys.executable, "-I", "-c", evaluator, str(path), marker], capture_output=True, text=True,
                          timeout=60, cwd=REPO, env={**os.environ, **env})


@needs_namespaces
def test_the_evaluators_environment_cannot_be_read(tmp_path):
    """Not through os.environ (an empty environment) nor through /proc/<pid>/environ of any process it can see."""
    proc = _evaluate(textwrap.dedent("""\
        import os
        leaks = []
        for pid in filter(str.isdigit, os.listdir('/proc')):
            try:
                if b'hunter2-26' in open(f'/proc/{pid}/environ', 'rb').read():
                    leaks.append(pid)
            except OSError:
                pass
        assert not leaks, f'read the evaluator environment through /proc/{leaks}/environ'
        assert 'SMOLLM3_SECRET_TOKEN' not in os.environ
        """), tmp_path, {"SMOLLM3_SECRET_TOKEN": "hunter2-26"})
    assert "evaluator alive: passed namespaces" in proc.stdout, proc.stderr[-1500:]


@needs_namespaces
def test_project_and_home_files_are_not_there():
    home_entries = sorted(os.listdir(Path.home()))
    r = run_program(textwrap.dedent(f"""\
        import os, sys
        try:
            open({str(REPO / 'pyproject.toml')!r}).read()
            raise AssertionError('read the project')
        except (FileNotFoundError, PermissionError):
            pass
        try:
            seen = os.listdir({str(Path.home())!r})
        except (FileNotFoundError, PermissionError):
            seen = []
        # only the directories leading to the Python installation are bound back
        assert all(name in {home_entries!r} and sys.base_prefix.startswith(os.path.join({str(Path.home())!r}, name))
                   for name in seen), seen
        """), timeout=10.0)
    assert r.passed, r.stderr


@needs_namespaces
def test_the_evaluator_cannot_be_signalled(tmp_path):
    marker = f"smollm3-evaluator-{os.getpid()}"
    proc = _evaluate(textwrap.dedent(f"""\
        import os, signal
        for pid in filter(str.isdigit, os.listdir('/proc')):  # the evaluator, wherever it can be seen
            try:
                if b{marker!r} in open(f'/proc/{{pid}}/cmdline', 'rb').read():
                    os.kill(int(pid), signal.SIGKILL)
            except OSError:
                pass
        os.kill(os.getppid(), signal.SIGKILL)
        """), tmp_path, {}, marker)
    # the program's own fate does not matter (as its namespace's init it even ignores its own SIGKILL)
    assert proc.returncode == 0 and "evaluator alive:" in proc.stdout and "namespaces" in proc.stdout, \
        (proc.returncode, proc.stderr[-1500:])


def _processes_with(marker: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(int(pid))
        except OSError:
            pass
    return found


@needs_namespaces
@pytest.mark.parametrize("ending", ["exits", "times out"])
def test_no_process_outlives_the_run(ending):
    """A grandchild in a session of its own (which a process-group kill misses), forks allowed for the test."""
    marker = f"smollm3-orphan-{os.getpid()}-{ending.replace(' ', '-')}"
    code = textwrap.dedent(f"""\
        import subprocess, sys, time
        subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)', {marker!r}],
                         start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        """) + ("time.sleep(300)\n" if ending == "times out" else "")
    try:
        r = run_program(code, timeout=3.0, nproc=8)
        assert r.status == ("passed" if ending == "exits" else "timeout"), r.stderr
        deadline = time.time() + 2  # a killed process may linger a moment before it is reaped; a survivor stays
        while _processes_with(marker) and time.time() < deadline:
            time.sleep(0.05)
        assert _processes_with(marker) == []
    finally:
        for pid in _processes_with(marker):  # what the old sandbox left behind
            os.kill(pid, signal.SIGKILL)


@needs_namespaces
def test_there_is_no_network():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        r = run_program(textwrap.dedent(f"""\
            import socket
            try:
                socket.create_connection(('127.0.0.1', {port}), timeout=2).close()
                raise AssertionError('reached the evaluator over the network')
            except OSError as e:
                assert not isinstance(e, TimeoutError), e
            """), timeout=10.0)
    assert r.passed, r.stderr


def test_unknown_isolation_is_refused():
    with pytest.raises(ValueError, match="isolation 'vm' is unknown; use one of auto, namespaces, process"):
        run_program("pass", isolation="vm")
