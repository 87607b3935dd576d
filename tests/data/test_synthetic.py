"""Synthetic tasks: answers re-derived independently, checkers accept right and reject wrong, seeds reproduce."""

import calendar
import json
import operator
import re
from datetime import date

import pytest

from smollm3.cli import main
from smollm3.data.synthetic import check, final_number, generate
from smollm3.data.synthetic_long import KINDS, retrieval_document, retrieval_prompt
from smollm3.tokenizer import load_tokenizer

TASKS = ["arithmetic", "word_problem", "running_total", "memory_chat", "preference", "tool_xml", "tool_python"]


def _wrong(answer):
    return str(int(answer) + 1) if isinstance(answer, int) else "something else"


@pytest.mark.parametrize("task", TASKS)
def test_seeded_and_checkable(task):
    a, b = generate(task, 20, seed=7), generate(task, 20, seed=7)
    assert a == b and a != generate(task, 20, seed=8)
    for ex in a:
        if task == "preference":
            assert check(ex, ex["chosen"][0]["content"]) and not check(ex, ex["rejected"][0]["content"])
            continue
        reply = ex["messages"][-1]["content"]
        assert check(ex, reply), reply
        assert not check(ex, f"The answer is {_wrong(ex['answer'])}.")


def _steps_are_true(text):
    for a, op, b, div, r in re.findall(r"(-?\d+) ([-+×÷]) (-?\d+)(?: / (\d+))? = (-?\d+)", text):
        a, b, r = int(a), int(b), int(r)
        ops = {"+": operator.add, "-": operator.sub, "×": operator.mul, "÷": operator.truediv}
        assert ops[op](a, b) / (int(div) if div else 1) == r, (a, op, b, div, r)


def test_arithmetic_answers_and_traces_are_exact():
    for think in (True, False):
        for ex in generate("arithmetic", 200, seed=1, think=think):
            expr = ex["messages"][0]["content"].removeprefix("What is ").removesuffix("?")
            assert eval(expr.replace("×", "*").replace("÷", "/")) == ex["answer"]  # Python's own precedence
            reply = ex["messages"][1]["content"]
            if think:
                _steps_are_true(reply)
            assert ("<think>" in reply) == think and final_number(reply) == ex["answer"]


def test_word_problem_traces_and_answers():
    for ex in generate("word_problem", 200, seed=2, think=True):
        reply = ex["messages"][1]["content"]
        _steps_are_true(reply)
        assert final_number(reply) == ex["answer"] and ex["answer"] >= 0
        m = re.search(r"costs \$(\d+)\. It is discounted by (\d+)%", ex["messages"][0]["content"])
        if m:
            price, pct = int(m.group(1)), int(m.group(2))
            assert ex["answer"] == price - price * pct / 100


def test_running_total_follows_the_user():
    for ex in generate("running_total", 50, seed=3):
        value = None
        for m in ex["messages"]:
            if m["role"] != "user":
                continue
            c = m["content"]
            n = int(re.findall(r"-?\d+", c)[0]) if re.search(r"\d", c) else None
            if c.startswith("Let's"):
                value = n
            elif c.startswith("Add"):
                value += n
            elif c.startswith("Subtract"):
                value -= n
            elif c.startswith("Multiply"):
                value *= n
        assert value == ex["answer"]


def test_memory_chat_answer_was_told_earlier():
    for ex in generate("memory_chat", 50, seed=4):
        told = " ".join(m["content"] for m in ex["messages"][:-2] if m["role"] == "user")
        assert ex["answer"] in told


def test_tool_results_are_recomputed_independently():
    for style in ("xml", "python"):
        for ex in generate(f"tool_{style}", 60, seed=5):
            name, args = ex["call"]["name"], ex["call"]["arguments"]
            if name == "days_between":
                want = (date.fromisoformat(args["end"]) - date.fromisoformat(args["start"])).days
            elif name == "weekday":
                want = calendar.day_name[date.fromisoformat(args["day"]).weekday()]
            elif name == "convert_temperature":
                kelvin = {"celsius": args["value"] + 273.15, "fahrenheit": (args["value"] + 459.67) * 5 / 9,
                          "kelvin": args["value"]}[args["from_unit"]]
                want = {"celsius": kelvin - 273.15, "fahrenheit": kelvin * 9 / 5 - 459.67,
                        "kelvin": kelvin}[args["to_unit"]]
            elif name == "compound_interest":
                want = args["principal"] * (1 + args["rate_percent"] / 100) ** args["years"]
            else:
                want = len(args["text"].split())
            got = ex["answer"]
            assert abs(got - want) < 0.006 if isinstance(want, float) else got == want
            tool_msg = ex["messages"][2]
            assert tool_msg["role"] == "tool" and str(got) in tool_msg["content"]
            kwargs = ex["chat_template_kwargs"]
            assert ("xml_tools" if style == "xml" else "python_tools") in kwargs
            call_turn = ex["messages"][1]["content"]
            assert check(ex, call_turn)  # the reference call parses back to the expected call
            first = next(iter(args))
            wrong = call_turn.replace(json.dumps(args[first], ensure_ascii=False),
                                      json.dumps("0000-01-01" if isinstance(args[first], str) else -1), 1)
            assert not check(ex, wrong)


def test_long_context_lengths_needles_and_checker(trained_tokenizer_dir):
    tok = load_tokenizer(trained_tokenizer_dir)
    for kind in KINDS:
        for length in (500, 3000):
            ex = generate(kind, 1, seed=6, length=length, tokenizer=tok)[0]
            text = ex["messages"][0]["content"]
            n = len(tok.encode(text))
            assert n == ex["length"] and length - 150 < n <= length
            assert check(ex, ex["messages"][1]["content"])
            assert not check(ex, ", ".join(ex["answer"][:-1]) or "nothing")
            if kind == "variable_tracking":  # resolve the chains from the text itself
                value = re.search(r"assigned the value (\d+)", text).group(1)
                names, changed = set(), True
                assigns = re.findall(r"VAR (\w+) = (VAR \w+|\d+)", text)
                while changed:
                    changed = False
                    for var, rhs in assigns:
                        if var not in names and (rhs == value or rhs.removeprefix("VAR ") in names):
                            names.add(var)
                            changed = True
                assert names == set(ex["answer"])
            else:
                for v in ex["answer"]:
                    assert f"is: {v}." in text
    essay = generate("niah_single", 1, seed=0, length=2000, haystack=["Un paragraphe.\n\nUn autre paragraphe."])[0]
    assert "Un autre paragraphe." in essay["messages"][0]["content"]


def test_retrieval_prompt_and_document_agree():
    """Evaluation prompts base models with retrieval_prompt; training documents are retrieval_document: one prefix."""
    ex = generate("niah_multivalue", 1, seed=3, length=300)[0]
    prompt = retrieval_prompt(ex)
    # RULER's base-model answer prefix, ending in the words that precede a value in its needles
    assert prompt == ex["messages"][0]["content"] + "\nAnswer: " + ex["answer_prefix"]
    assert ex["answer_prefix"].startswith("The special magic numbers for ") and prompt.endswith(" are:")
    doc = retrieval_document(ex)
    assert doc.startswith(prompt + " ") and check(ex, doc[len(prompt):])
    assert doc[len(prompt) + 1:] == ", ".join(ex["answer"])


def test_cli_writes_jsonl_that_the_sft_loader_reads(tmp_path, trained_tokenizer_dir, capsys):
    from smollm3.data.sft import load_conversations

    out = tmp_path / "math.jsonl"
    assert main(["data", "synth", "word_problem", "--n", "5", "--out", str(out), "--think"]) == 0
    assert len(load_conversations([out])) == 5
    out = tmp_path / "niah.jsonl"
    assert main(["data", "synth", "niah_multikey", "--n", "2", "--out", str(out), "--length", "800",
                 "--tokenizer", str(trained_tokenizer_dir)]) == 0
    assert len(out.read_text().splitlines()) == 2
    assert main(["data", "synth", "nonsense", "--n", "1", "--out", str(out)]) == 1
    assert "unknown synthetic task" in capsys.readouterr().err
