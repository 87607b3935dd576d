"""Tool-calling conversations, in both of SmolLM3's tool styles, with real tools and exact results.

xml:    the tools go in `chat_template_kwargs.xml_tools`; the assistant answers with
        <tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>, the tool's JSON result comes back as a
        `tool` message, and the assistant gives the final answer.
python: the tools go in `chat_template_kwargs.python_tools`; the assistant writes <code>fn(arg=...)</code>, the
        tool message holds what the call printed.

The tools are small deterministic functions (dates, temperatures, interest, word counts), run here to produce
the tool result, so every answer is exact. `check_tool_example` accepts a response that makes the expected call
(same function, same arguments) or, after the tool result, states the expected answer.
"""

from __future__ import annotations

import ast
import json
import random
from datetime import date, timedelta

from smollm3.parsing import answer_text, parse_output


def days_between(start: str, end: str) -> int:
    return (date.fromisoformat(end) - date.fromisoformat(start)).days


def weekday(day: str) -> str:
    return date.fromisoformat(day).strftime("%A")


def convert_temperature(value: float, from_unit: str, to_unit: str) -> float:
    to_c = {"celsius": lambda v: v, "fahrenheit": lambda v: (v - 32) * 5 / 9, "kelvin": lambda v: v - 273.15}
    from_c = {"celsius": lambda c: c, "fahrenheit": lambda c: c * 9 / 5 + 32, "kelvin": lambda c: c + 273.15}
    return round(from_c[to_unit](to_c[from_unit](value)), 2)


def compound_interest(principal: float, rate_percent: float, years: int) -> float:
    return round(principal * (1 + rate_percent / 100) ** years, 2)


def word_count(text: str) -> int:
    return len(text.split())


def _schema(name, description, params: dict, required=None) -> dict:
    return {"name": name, "description": description,
            "parameters": {"type": "object", "properties": params, "required": required or list(params)}}


TOOLS = {
    "days_between": (days_between, _schema("days_between", "Number of days from start to end (ISO dates).", {
        "start": {"type": "string", "description": "start date, YYYY-MM-DD"},
        "end": {"type": "string", "description": "end date, YYYY-MM-DD"}})),
    "weekday": (weekday, _schema("weekday", "The day of the week of a date.", {
        "day": {"type": "string", "description": "a date, YYYY-MM-DD"}})),
    "convert_temperature": (convert_temperature, _schema(
        "convert_temperature", "Convert a temperature between units, rounded to 2 decimals.", {
            "value": {"type": "number"},
            "from_unit": {"type": "string", "enum": ["celsius", "fahrenheit", "kelvin"]},
            "to_unit": {"type": "string", "enum": ["celsius", "fahrenheit", "kelvin"]}})),
    "compound_interest": (compound_interest, _schema(
        "compound_interest", "Balance after compounding yearly, rounded to cents.", {
            "principal": {"type": "number"}, "rate_percent": {"type": "number"}, "years": {"type": "integer"}})),
    "word_count": (word_count, _schema("word_count", "Number of whitespace-separated words in a text.", {
        "text": {"type": "string"}})),
}
SENTENCES = ["The quick brown fox jumps over the lazy dog", "Small models can still reason step by step",
             "Tea is best enjoyed slowly on a rainy afternoon", "Every test that cannot fail proves nothing",
             "Le renard brun saute par-dessus le chien"]


def _random_day(rng: random.Random) -> str:
    return (date(2000, 1, 1) + timedelta(days=rng.randint(0, 12000))).isoformat()


def _task(rng: random.Random) -> tuple[str, dict, str, str]:
    """(tool name, arguments, user question, answer template with {result})."""
    name = rng.choice(list(TOOLS))
    if name == "days_between":
        a, b = sorted([_random_day(rng), _random_day(rng)])
        return name, {"start": a, "end": b}, f"How many days are there from {a} to {b}?", "There are {result} days."
    if name == "weekday":
        d = _random_day(rng)
        return name, {"day": d}, f"What day of the week was {d}?", "{day} was a {result}."
    if name == "convert_temperature":
        units = rng.sample(["celsius", "fahrenheit", "kelvin"], 2)
        v = rng.randint(-40, 120)
        return (name, {"value": v, "from_unit": units[0], "to_unit": units[1]},
                f"Convert {v} degrees {units[0]} to {units[1]}.", f"{v} degrees {units[0]} is {{result}} {units[1]}.")
    if name == "compound_interest":
        p, r, y = rng.randint(1, 50) * 100, rng.choice([1, 1.5, 2, 2.5, 3, 4, 5]), rng.randint(1, 20)
        return (name, {"principal": p, "rate_percent": r, "years": y},
                f"If I invest ${p} at {r}% a year, compounded yearly, what is the balance after {y} years?",
                "The balance would be ${result}.")
    text = rng.choice(SENTENCES)
    return name, {"text": text}, f'How many words are in the sentence "{text}"?', "The sentence has {result} words."


def _python_call(name: str, args: dict) -> str:
    return f"{name}({', '.join(f'{k}={json.dumps(v, ensure_ascii=False)}' for k, v in args.items())})"


def make_tool_chat(rng: random.Random, style: str = "xml", think: bool = False, offered: int | None = None) -> dict:
    """A request one of TOOLS answers, the call, its result and the final answer. `offered`: how many tools the
    prompt lists (the right one among them; default all): fewer keeps prompts short for small contexts."""
    if style not in ("xml", "python"):
        raise ValueError(f"tool style must be 'xml' or 'python', got {style!r}")
    name, args, question, answer_template = _task(rng)
    fn = TOOLS[name][0]
    result = fn(**args)
    if style == "xml":
        call = "<tool_call>\n" + json.dumps({"name": name, "arguments": args}, ensure_ascii=False) + "\n</tool_call>"
        tool_output = json.dumps({"result": result}, ensure_ascii=False)
    else:
        call = f"<code>\nprint({_python_call(name, args)})\n</code>"
        tool_output = str(result)
    answer = answer_template.format(result=result, **args)
    if think:
        call = f"<think>\nThe {name} tool answers this exactly, so I call it.\n</think>\n" + call
        answer = f"<think>\nThe tool returned {result}.\n</think>\n" + answer
    # other tools are offered too, so choosing the right one is part of the task
    names = sorted(TOOLS) if offered is None else \
        sorted([name] + rng.sample([k for k in sorted(TOOLS) if k != name], max(0, min(offered, len(TOOLS)) - 1)))
    kwargs = {"enable_thinking": think, ("xml_tools" if style == "xml" else "python_tools"): [TOOLS[k][1] for k in names]}
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": call},
                         {"role": "tool", "content": tool_output}, {"role": "assistant", "content": answer}],
            "chat_template_kwargs": kwargs, "task": f"tool_{style}", "call": {"name": name, "arguments": args},
            "answer": result}


def make_tool_preference(rng: random.Random, style: str = "xml", think: bool = False, offered: int | None = 2) -> dict:
    """A tool request with the right call (chosen) and a wrong one (rejected): half the time a call to another
    offered tool with the same arguments, half the time the right call with its closing bracket dropped, which no
    client can parse. Preference pairs like these keep preference tuning from trading tool calling away."""
    ex = make_tool_chat(rng, style=style, think=think, offered=max(2, offered or len(TOOLS)))
    call = ex["messages"][1]["content"]
    offered_names = [t["name"] for t in ex["chat_template_kwargs"][f"{style}_tools"]]
    name = ex["call"]["name"]
    if rng.random() < 0.5:
        other = rng.choice([n for n in offered_names if n != name])
        wrong = call.replace(f'"name": "{name}"', f'"name": "{other}"') if style == "xml" else \
            call.replace(f"print({name}(", f"print({other}(")
    else:
        end = call.rindex("}") if style == "xml" else call.rindex(")")
        wrong = call[:end] + call[end + 1:]
    return {"prompt": ex["messages"][:1], "chosen": [{"role": "assistant", "content": call}],
            "rejected": [{"role": "assistant", "content": wrong}], "chat_template_kwargs": ex["chat_template_kwargs"],
            "task": "preference_tool", "call": ex["call"]}


# ------------------------------------------------------------------------------------------------------------------
# checking


def parse_call(response: str, style: str) -> tuple[str, dict] | None:
    """(function name, arguments) of the first tool call in a response, or None."""
    parsed = parse_output(response)
    for call in parsed.tool_calls:
        fn = call["function"]
        args = json.loads(fn["arguments"])
        if fn["name"] != "python":
            return fn["name"], args
        try:  # a <code> block: find the tool call inside it, print(...) or not
            tree = ast.parse(args["code"])
        except SyntaxError:
            return None
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in TOOLS:
                try:
                    params = list(TOOLS[node.func.id][1]["parameters"]["properties"])
                    values = {params[i]: ast.literal_eval(a) for i, a in enumerate(node.args)}
                    values.update({k.arg: ast.literal_eval(k.value) for k in node.keywords})
                except (ValueError, IndexError):
                    return None
                return node.func.id, values
    return None


def _same(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return abs(a - b) < 1e-9
    return a == b


def check_tool_example(example: dict, response: str) -> bool:
    call = parse_call(response, example["task"].removeprefix("tool_"))
    if call is not None:
        name, args = call
        want = example["call"]
        return name == want["name"] and set(args) == set(want["arguments"]) and \
            all(_same(args[k], v) for k, v in want["arguments"].items())
    return str(example["answer"]) in answer_text(response)
