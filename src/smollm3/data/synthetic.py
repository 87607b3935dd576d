"""Seeded synthetic tasks with exact answers and checkers: arithmetic, math word problems, multi-turn chats and
preference pairs here; tool calling in synthetic_tools.py; RULER-style long-context retrieval in synthetic_long.py.

Every example is a TRL conversational record the SFT loader reads as is:
    {"messages": [...], "chat_template_kwargs": {"enable_thinking": bool, ...}, "task": str, "answer": ...}
In think mode the last assistant turn opens with a step-by-step `<think>...</think>` trace (SmolLM3's reasoning
format); in no_think mode it answers directly. Preference pairs are `{prompt, chosen, rejected,
chat_template_kwargs}` with a correct chosen and a wrong rejected solution.

`check(example, response)` says whether a model's response (raw text, think block included or not) answers the
example correctly; `generate(task, n, seed)` makes n examples of a task, the same ones for the same seed.
"""

from __future__ import annotations

import random
import re
from decimal import Decimal, InvalidOperation

from smollm3.data import synthetic_long, synthetic_tools
from smollm3.parsing import answer_text

NAMES = ["Ana", "Ben", "Chloé", "Dmitri", "Elena", "Farid", "Greta", "Hugo", "Ines", "Jonas", "Kemal", "Lucía",
         "Marco", "Nadia", "Otto", "Priya", "Quentin", "Rosa", "Sven", "Tariq", "Uma", "Vera", "Wen", "Yusuf", "Zoe"]
OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "×": lambda a, b: a * b, "÷": lambda a, b: a // b}
PRECEDENCE = {"+": 1, "-": 1, "×": 2, "÷": 2}


# ------------------------------------------------------------------------------------------------------------------
# answers


_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?")


def final_number(response: str) -> Decimal | None:
    """The number a response gives as its answer: the one after "answer is", else the last number."""
    text = answer_text(response)
    m = re.search(r"answer is\s*:?\s*\**\s*(-?\$?\d[\d,]*(?:\.\d+)?)", text, re.IGNORECASE)
    raw = m.group(1) if m else (_NUMBER.findall(text) or [None])[-1]
    if raw is None:
        return None
    try:
        return Decimal(raw.replace("$", "").replace(",", ""))
    except InvalidOperation:
        return None


def _number_matches(response: str, answer) -> bool:
    got = final_number(response)
    return got is not None and got == Decimal(str(answer))


# ------------------------------------------------------------------------------------------------------------------
# arithmetic


def _expression(rng: random.Random, n_ops: int):
    """An expression over small integers with an exact integer value, and its evaluation steps in order.
    Returns (text, value, steps) where steps are (left value, op, right value, result)."""
    value = rng.randint(2, 30)
    text, prec = str(value), 3
    steps = []
    for _ in range(n_ops):
        choices = ["+", "-", "×"] + (["÷"] if value and any(value % d == 0 for d in range(2, 10)) else [])
        op = rng.choice(choices)
        if op == "÷":
            d = rng.choice([d for d in range(2, 10) if value % d == 0])
            left, right, result = value, d, value // d
            text = f"{_paren(text, prec, PRECEDENCE[op], right_side=False)} ÷ {d}"
        else:
            n = rng.randint(2, 12 if op == "×" else 50)
            if op == "-" and n == value:  # a zero would make the rest of the chain trivial
                n += 1
            if rng.random() < 0.5 or op == "-":
                left, right = value, n
                text = f"{_paren(text, prec, PRECEDENCE[op], right_side=False)} {op} {n}"
            else:
                left, right = n, value
                text = f"{n} {op} {_paren(text, prec, PRECEDENCE[op], right_side=True)}"
            result = OPS[op](left, right)
        steps.append((left, op, right, result))
        value, prec = result, PRECEDENCE[op]
    return text, value, steps


def _paren(text: str, prec: int, op_prec: int, right_side: bool) -> str:
    # the sub-expression needs brackets if it binds looser than the new operator (or as loosely, on the right,
    # since - and ÷ are not associative)
    return f"({text})" if prec < op_prec or (right_side and prec == op_prec) else text


def _steps_text(steps) -> str:
    return "\n".join(f"{a} {op} {b} = {r}" for a, op, b, r in steps)


def make_arithmetic(rng: random.Random, think: bool = True, n_ops: int | None = None) -> dict:
    text, value, steps = _expression(rng, n_ops or rng.randint(2, 4))
    question = f"What is {text}?"
    if think:
        answer = (f"<think>\nI evaluate it step by step, innermost part first.\n{_steps_text(steps)}\n</think>\n"
                  f"The answer is {value}.")
    else:
        answer = f"{text} = {value}. The answer is {value}."
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
            "chat_template_kwargs": {"enable_thinking": think}, "task": "arithmetic", "answer": value,
            "steps": [list(s) for s in steps]}


def make_small_arithmetic(rng: random.Random, think: bool = True, n_ops: int | None = None) -> dict:
    """A chain of single-digit additions and subtractions read left to right, never below zero ("What is
    7 + 5 - 3?"): the miniature recipe's math. Each step is a one-digit fact a tiny model can learn; the whole
    chain in one step is much harder, which is what think mode is for."""
    value = rng.randint(1, 9)
    text, steps = str(value), []
    for _ in range(n_ops or rng.randint(2, 3)):
        n = rng.randint(1, 9)
        op = "-" if n <= value and rng.random() < 0.5 else "+"
        result = value + n if op == "+" else value - n
        steps.append((value, op, n, result))
        text, value = f"{text} {op} {n}", result
    answer = (f"<think>\n{_steps_text(steps)}\n</think>\nThe answer is {value}." if think
              else f"The answer is {value}.")
    return {"messages": [{"role": "user", "content": f"What is {text}?"}, {"role": "assistant", "content": answer}],
            "chat_template_kwargs": {"enable_thinking": think}, "task": "small_arithmetic", "answer": value,
            "steps": [list(s) for s in steps]}


# ------------------------------------------------------------------------------------------------------------------
# word problems: (question, [(step text, value)], answer)


def _shopping(rng):
    name, n, price = rng.choice(NAMES), rng.randint(2, 9), rng.randint(2, 15)
    item = rng.choice(["notebooks", "apples", "pens", "tickets", "mugs"])
    cost = n * price
    bill = next(b for b in (10, 20, 50, 100, 200) if b > cost)
    return ((f"{name} buys {n} {item} at ${price} each and pays with a ${bill} bill. How much change, in dollars, "
            f"does {name} get?"),
            [(f"The {item} cost {n} × {price} = {cost} dollars.", cost),
             (f"The change is {bill} - {cost} = {bill - cost} dollars.", bill - cost)], bill - cost)


def _travel(rng):
    s1, h1, s2, h2 = rng.randint(3, 12) * 10, rng.randint(1, 4), rng.randint(3, 12) * 10, rng.randint(1, 3)
    vehicle = rng.choice(["train", "bus", "car", "ferry"])
    d1, d2 = s1 * h1, s2 * h2
    return ((f"A {vehicle} travels at {s1} km/h for {h1} hours, then at {s2} km/h for {h2} hours. How many "
            f"kilometres does it travel in total?"),
            [(f"First part: {s1} × {h1} = {d1} km.", d1), (f"Second part: {s2} × {h2} = {d2} km.", d2),
             (f"Total: {d1} + {d2} = {d1 + d2} km.", d1 + d2)], d1 + d2)


def _sharing(rng):
    name, k, q = rng.choice(NAMES), rng.randint(2, 8), rng.randint(3, 15)
    extra = rng.randint(1, 9)
    thing = rng.choice(["marbles", "stickers", "cards", "sweets"])
    total = k * q + extra
    return ((f"{name} has {total} {thing}, gives {extra} to a neighbour, and shares the rest equally among {k} "
            f"friends. How many {thing} does each friend get?"),
            [(f"After giving some away: {total} - {extra} = {total - extra}.", total - extra),
             (f"Each friend gets {total - extra} ÷ {k} = {q}.", q)], q)


def _ages(rng):
    a, b = rng.sample(NAMES, 2)
    x, y, z = rng.randint(2, 15), rng.randint(2, 10), rng.randint(12, 40)
    return (f"{a} is {x} years older than {b}. In {y} years, {b} will be {z}. How old is {a} now?",
            [(f"{b} is now {z} - {y} = {z - y}.", z - y), (f"{a} is {z - y} + {x} = {z - y + x}.", z - y + x)],
            z - y + x)


def _bakery(rng):
    trays, per, morning = rng.randint(3, 9), rng.randint(6, 24), rng.randint(5, 30)
    made = trays * per
    afternoon = rng.randint(1, max(1, made - morning - 1))
    left = made - morning - afternoon
    return ((f"A bakery bakes {trays} trays of {per} cookies. It sells {morning} in the morning and {afternoon} in "
            f"the afternoon. How many cookies are left?"),
            [(f"Baked: {trays} × {per} = {made}.", made), (f"Sold: {morning} + {afternoon} = {morning + afternoon}.",
                                                            morning + afternoon),
             (f"Left: {made} - {morning + afternoon} = {left}.", left)], left)


def _discount(rng):
    price, pct = rng.randint(1, 25) * 20, rng.choice([5, 10, 15, 20, 25, 30, 40, 50])
    off = price * pct // 100
    item = rng.choice(["jacket", "lamp", "bicycle", "chair", "kettle"])
    return (f"A {item} costs ${price}. It is discounted by {pct}%. What is the new price in dollars?",
            [(f"The discount is {price} × {pct} / 100 = {off} dollars.", off),
             (f"The new price is {price} - {off} = {price - off} dollars.", price - off)], price - off)


WORD_PROBLEMS = (_shopping, _travel, _sharing, _ages, _bakery, _discount)


def make_word_problem(rng: random.Random, think: bool = True) -> dict:
    question, steps, value = rng.choice(WORD_PROBLEMS)(rng)
    if think:
        trace = "\n".join(s for s, _ in steps)
        answer = f"<think>\n{trace}\n</think>\nThe answer is {value}."
    else:
        answer = f"The answer is {value}."
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
            "chat_template_kwargs": {"enable_thinking": think}, "task": "word_problem", "answer": value,
            "steps": [[s, v] for s, v in steps]}


# ------------------------------------------------------------------------------------------------------------------
# multi-turn chats


def make_running_total(rng: random.Random, think: bool = False, turns: int | None = None) -> dict:
    """The user keeps changing a number over several turns; the assistant tracks it; the last turn asks for it."""
    value = rng.randint(1, 20)
    messages = [{"role": "user", "content": f"Let's keep a running total. Start with {value}."},
                {"role": "assistant", "content": f"Got it. The total is {value}."}]
    steps = []
    for _ in range(turns or rng.randint(2, 5)):
        op = rng.choice(["add", "subtract", "multiply"])
        n = rng.randint(2, 5) if op == "multiply" else rng.randint(1, 30)
        new = value + n if op == "add" else value - n if op == "subtract" else value * n
        ask = {"add": f"Add {n}.", "subtract": f"Subtract {n}.", "multiply": f"Multiply it by {n}."}[op]
        sym = {"add": "+", "subtract": "-", "multiply": "×"}[op]
        steps.append(f"{value} {sym} {n} = {new}")
        messages += [{"role": "user", "content": ask}, {"role": "assistant", "content": f"The total is {new}."}]
        value = new
    messages += [{"role": "user", "content": "What is the total now?"}]
    final = f"The answer is {value}."
    if think:
        final = "<think>\n" + "\n".join(steps) + "\n</think>\n" + final
    messages.append({"role": "assistant", "content": final})
    return {"messages": messages, "chat_template_kwargs": {"enable_thinking": think}, "task": "running_total",
            "answer": value}


FACTS = [("pet", "My {animal} is called {name}.", "What is my {animal} called?",
          {"animal": ["cat", "dog", "parrot", "tortoise"]}),
         ("city", "I live in {city}.", "Which city do I live in?",
          {"city": ["Lyon", "Porto", "Bologna", "Leipzig", "Valencia", "Ghent", "Tromsø"]}),
         ("colour", "My favourite colour is {colour}.", "What is my favourite colour?",
          {"colour": ["teal", "amber", "crimson", "olive", "lavender"]}),
         ("number", "My lucky number is {number}.", "What is my lucky number?", {})]


def make_memory_chat(rng: random.Random, think: bool = False) -> dict:
    """The user mentions facts over several turns (with small talk between), then asks for one of them."""
    chosen = rng.sample(FACTS, rng.randint(2, len(FACTS)))
    messages, values = [], {}
    for key, say, ask, slots in chosen:
        fill = {k: rng.choice(v) for k, v in slots.items()}
        fill["name"] = rng.choice(NAMES)
        fill["number"] = str(rng.randint(2, 99))
        values[key] = (ask.format(**fill), fill["name"] if key == "pet" else fill[key])
        messages += [{"role": "user", "content": say.format(**fill)},
                     {"role": "assistant", "content": rng.choice(["Noted!", "Good to know.", "I'll remember that."])}]
    key = rng.choice([c[0] for c in chosen])
    question, answer = values[key]
    messages.append({"role": "user", "content": question})
    final = f"{answer}."
    if think:
        final = f"<think>\nEarlier in the conversation the user told me: {answer}.\n</think>\n" + final
    messages.append({"role": "assistant", "content": final})
    return {"messages": messages, "chat_template_kwargs": {"enable_thinking": think}, "task": "memory_chat",
            "answer": answer}


# ------------------------------------------------------------------------------------------------------------------
# preference pairs


def make_preference(rng: random.Random, think: bool = False, small: bool = False, n_ops: int | None = None) -> dict:
    """A math problem with a correct solution (chosen) and the same solution with a slip in one step, carried
    through to a wrong final answer (rejected). `small`: the problems of make_small_arithmetic (with `n_ops`
    operations)."""
    if small or rng.random() < 0.5:
        if small:
            ex = make_small_arithmetic(rng, n_ops=n_ops)
            question, value, steps = ex["messages"][0]["content"], ex["answer"], [tuple(s) for s in ex["steps"]]
        else:
            text, value, steps = _expression(rng, rng.randint(2, 4))
            question = f"What is {text}?"
        lines = [f"{a} {op} {b} = {r}" for a, op, b, r in steps]
        # a slip in the last step: results earlier could make a later ÷ inexact
        a, op, b, r = steps[-1]
        wrong = r + rng.choice([-3, -2, -1, 1, 2, 3] if r >= 3 or not small else [1, 2, 3])
        wrong_lines = lines[:-1] + [f"{a} {op} {b} = {wrong}"]
    else:
        question, steps, value = rng.choice(WORD_PROBLEMS)(rng)
        lines = [s for s, _ in steps]
        s, v = steps[-1]
        wrong = v + rng.choice([-3, -2, -1, 1, 2, 3])
        cut = s.rfind(f"= {v}")
        wrong_lines = lines[:-1] + [s[:cut] + f"= {wrong}" + s[cut + len(f"= {v}"):]]

    def solution(trace, answer):
        body = f"The answer is {answer}."
        return f"<think>\n{chr(10).join(trace)}\n</think>\n{body}" if think else "\n".join(trace) + "\n" + body

    return {"prompt": [{"role": "user", "content": question}],
            "chosen": [{"role": "assistant", "content": solution(lines, value)}],
            "rejected": [{"role": "assistant", "content": solution(wrong_lines, wrong)}],
            "chat_template_kwargs": {"enable_thinking": think}, "task": "preference", "answer": value}


# ------------------------------------------------------------------------------------------------------------------
# one entry point


def check(example: dict, response: str) -> bool:
    """Whether `response` (the model's last assistant turn, raw) answers `example` correctly."""
    task = example["task"]
    if task in ("arithmetic", "small_arithmetic", "word_problem", "running_total", "preference"):
        return _number_matches(response, example["answer"])
    if task == "memory_chat":
        return str(example["answer"]).lower() in answer_text(response).lower()
    if task.startswith("tool_"):
        return synthetic_tools.check_tool_example(example, response)
    if task in synthetic_long.KINDS:
        return synthetic_long.check_retrieval(example, response)
    raise ValueError(f"no checker for task {task!r}")


def generate(task: str, n: int, seed: int = 0, **options) -> list[dict]:
    """`n` examples of `task`, identical for the same seed and options. Tasks: arithmetic, small_arithmetic, word_problem,
    running_total, memory_chat, preference (options: think=bool); tool_xml, tool_python (think=bool);
    tool_preference (style=xml|python, think, offered);
    niah_single, niah_multikey, niah_multivalue, niah_multiquery, variable_tracking (length=tokens,
    tokenizer=..., haystack=[texts])."""
    makers = {"arithmetic": make_arithmetic, "small_arithmetic": make_small_arithmetic, "word_problem": make_word_problem, "running_total": make_running_total,
              "memory_chat": make_memory_chat, "preference": make_preference,
              "tool_xml": lambda rng, **kw: synthetic_tools.make_tool_chat(rng, style="xml", **kw),
              "tool_python": lambda rng, **kw: synthetic_tools.make_tool_chat(rng, style="python", **kw),
              "tool_preference": synthetic_tools.make_tool_preference}
    for kind in synthetic_long.KINDS:
        makers[kind] = lambda rng, kind=kind, **kw: synthetic_long.make_retrieval(rng, kind=kind, **kw)
    if task not in makers:
        raise ValueError(f"unknown synthetic task {task!r}; choose from {', '.join(makers)}")
    rng = random.Random(f"{task}:{seed}")
    return [makers[task](rng, **options) for _ in range(n)]
