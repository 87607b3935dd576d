"""Tool-call correctness scoring on known-good and known-bad responses; `eval compare`; a real run for structure."""

import json
from datetime import date

import pytest

from smollm3.cli import main
from smollm3.data import synthetic
from smollm3.eval.compare import compare, load_results
from smollm3.eval.tasks import EvalError, get_task
from smollm3.eval.toolcall import score, tool_prompt

ALL = {"parses": True, "right_function": True, "right_arguments": True}
NONE = {"parses": False, "right_function": False, "right_arguments": False}


def _other_tool(name: str) -> str:
    return "weekday" if name != "weekday" else "word_count"


def test_xml_scoring_known_good_and_bad():
    for item in synthetic.generate("tool_xml", 4, seed=0):
        name, args = item["call"]["name"], item["call"]["arguments"]
        reference = item["messages"][1]["content"]  # the generator's own tool call
        assert score(item, reference) == ALL
        wrong_fn = "<tool_call>\n" + json.dumps({"name": _other_tool(name), "arguments": args}) + "\n</tool_call>"
        assert score(item, wrong_fn) == {**ALL, "right_arguments": False, "right_function": False}
        bad_args = {**args, next(iter(args)): "something else"}
        wrong_args = "<tool_call>\n" + json.dumps({"name": name, "arguments": bad_args}) + "\n</tool_call>"
        assert score(item, wrong_args) == {**ALL, "right_arguments": False}
        extra = "<tool_call>\n" + json.dumps({"name": name, "arguments": {**args, "x": 1}}) + "\n</tool_call>"
        assert score(item, extra) == {**ALL, "right_arguments": False}
        assert score(item, "I think the answer is 42.") == NONE
        assert score(item, "<tool_call>\n{not json\n</tool_call>") == NONE


def test_python_scoring_known_good_and_bad():
    for item in synthetic.generate("tool_python", 4, seed=0):
        name, args = item["call"]["name"], item["call"]["arguments"]
        assert score(item, item["messages"][1]["content"]) == ALL
        call = ", ".join(f"{k}={json.dumps(v)}" for k, v in args.items())
        assert score(item, f"<code>\nresult = {name}({call})\nprint(result)\n</code>") == ALL
        assert score(item, f"<code>\nprint({_other_tool(name)}({call}))\n</code>")["right_function"] is False
        assert score(item, "<code>\nprint(1 +\n</code>") == NONE  # does not parse as Python
        assert score(item, "No tools needed.") == NONE


def test_tool_prompt_offers_the_tools_and_stops_before_the_call():
    item = synthetic.generate("tool_xml", 1, seed=0)[0]
    prompt = tool_prompt(item, "smollm3", "no_think")
    assert item["messages"][0]["content"] in prompt and "<tool_call>" in prompt  # the xml tools section
    assert all(name in prompt for name in ("days_between", "weekday", "word_count"))
    assert item["messages"][1]["content"] not in prompt
    assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n")
    assert get_task("tool_python").kind == "tool"
    # a recipe's pinned date is the one printed (the model was trained with it), not today's
    assert "Today Date: 08 July 2025\n" in tool_prompt(item, "smollm3", "no_think", date(2025, 7, 8))


def _results(path, results):
    path.write_text(json.dumps({"results": results, "config": {}, "timings": {}}))
    return str(path)


def test_compare_prints_deltas(tmp_path, capsys):
    a = _results(tmp_path / "a.json", {"arithmetic": {"kind": "gen", "exact_match": 0.25, "n": 8},
                                       "humaneval": {"kind": "humaneval", "pass@1": 0.5, "n": 4}})
    b = _results(tmp_path / "b.json", {"arithmetic": {"kind": "gen", "exact_match": 0.5, "n": 8},
                                       "tool_xml": {"kind": "tool", "parses": 1.0, "n": 2}})
    rows = compare(load_results(a), load_results(b))
    assert {(r["task"], r["metric"]): r["delta"] for r in rows} == {
        ("arithmetic", "exact_match"): 0.25, ("humaneval", "pass@1"): None, ("tool_xml", "parses"): None}
    assert main(["eval", "compare", a, b]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["task", "metric", "a.json", "b.json", "delta"]
    assert lines[1].split() == ["arithmetic", "exact_match", "0.2500", "0.5000", "+0.2500"]
    assert lines[2].split() == ["humaneval", "pass@1", "0.5000", "-", "-"]


def test_compare_bad_files_are_clear_errors(tmp_path, capsys):
    good = _results(tmp_path / "good.json", {"arithmetic": {"exact_match": 0.1, "n": 1}})
    (tmp_path / "notjson.json").write_text("{oops")
    (tmp_path / "other.json").write_text(json.dumps({"model": "x"}))
    with pytest.raises(EvalError, match="no such results file"):
        load_results(tmp_path / "missing.json")
    with pytest.raises(EvalError, match="not a results file"):
        load_results(tmp_path / "notjson.json")
    with pytest.raises(EvalError, match="not a results file"):
        load_results(tmp_path / "other.json")
    assert main(["eval", "compare", good, str(tmp_path / "missing.json")]) == 1
    assert "no such results file" in capsys.readouterr().err
    assert main(["eval", "--tasks", "arithmetic"]) == 1
    assert "--model, --out required" in capsys.readouterr().err


@pytest.mark.real_weights
def test_tool_tasks_real_run(smollm2_dir, tmp_path, capsys):
    out, samples = tmp_path / "results.json", tmp_path / "samples.jsonl"
    rc = main(["eval", "--model", str(smollm2_dir), "--tasks", "tool_xml,tool_python", "--limit", "3",
               "--max-tokens", "32", "--out", str(out), "--samples", str(samples)])
    assert rc == 0
    res = json.loads(out.read_text())
    for name in ("tool_xml", "tool_python"):
        r = res["results"][name]
        assert r["kind"] == "tool" and r["n"] == 3
        assert 0 <= r["right_arguments"] <= r["right_function"] <= r["parses"] <= 1
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    assert len(rows) == 6 and all({"prompt", "response", "expected", "parses"} <= set(r) for r in rows)
    assert main(["eval", "compare", str(out), str(out)]) == 0
    assert "+0.0000" in capsys.readouterr().out
