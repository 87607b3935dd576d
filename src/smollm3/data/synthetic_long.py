"""RULER-style long-context retrieval at any length (Hsieh et al. 2024, "RULER: What's the Real Context Size of
Your Long-Context Language Models?"): needles hidden in a haystack, a question about them, exact answers.

Kinds:
  niah_single        one key with one value (a 7-digit number); what is the value?
  niah_single_word   the same with a word as the value (RULER's word-valued needles)
  niah_multikey      the target needle among distractor needles with other keys
  niah_multivalue    one key with several values at different depths; give them all
  niah_multiquery    several keys asked at once; give every value
  variable_tracking  a chain VAR A = 12345, VAR B = VAR A, ... among distractor chains; which variables equal 12345?

The haystack is RULER's "noise" sentences, or any texts you pass (e.g. corpus documents, the "essay" variant).
`length` is the token count of the user turn (context plus question): with a tokenizer it is met exactly or just
under; without one it is estimated at 4 characters per token.

For base (non-chat) models an example is plain text: `retrieval_prompt` (the user turn + "\\nAnswer: " + RULER's
base-model answer prefix, "The special magic number for KEY is:") is what
`smollm3 eval --mode base` prompts with, and `retrieval_document` (the prompt + " " + the answers) is the text a
pretraining document holds, so training and evaluation agree exactly.
"""

from __future__ import annotations

import random
import string

from smollm3.parsing import answer_text

KINDS = ("niah_single", "niah_single_word", "niah_multikey", "niah_multivalue", "niah_multiquery",
         "variable_tracking")
# RULER's word-valued needles ("type_needle_v: words"): none of these appears in the noise haystack
VALUE_WORDS = ["apple", "bridge", "candle", "dragon", "engine", "falcon", "guitar", "hammer", "island", "jacket",
               "kettle", "lemon", "mirror", "needle", "orange", "pillow", "rabbit", "saddle", "tiger", "umbrella",
               "violin", "wagon", "zebra", "anchor", "barrel", "castle", "donkey", "feather", "garden", "helmet",
               "lantern", "magnet", "napkin", "oyster", "parrot", "rocket", "spider", "tractor", "walnut", "window"]
NOISE = ("The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. ")
WORDS = ["amber", "basil", "cobalt", "delta", "ember", "fjord", "garnet", "harbor", "indigo", "juniper", "kestrel",
         "lumen", "meadow", "nectar", "onyx", "pepper", "quartz", "raven", "saffron", "tundra", "umber", "velvet",
         "willow", "xenon", "yarrow", "zephyr"]


def _key(rng: random.Random, used: set) -> str:
    while True:
        k = f"{rng.choice(WORDS)}-{rng.choice(WORDS)}"
        if k not in used:
            used.add(k)
            return k


def _value(rng: random.Random, used: set) -> str:
    while True:
        v = str(rng.randint(1_000_000, 9_999_999))
        if v not in used:
            used.add(v)
            return v


def _needle(key: str, value: str) -> str:
    return f"One of the special magic numbers for {key} is: {value}. "


def _var(rng: random.Random, used: set) -> str:
    while True:
        v = "".join(rng.choice(string.ascii_uppercase) for _ in range(5))
        if v not in used:
            used.add(v)
            return v


def _needles(rng: random.Random, kind: str) -> tuple[list[str], str, list[str], str]:
    """(needle sentences in order of appearance, question, answers, answer prefix). The prefix starts a base
    model's answer as RULER's base-model templates do; it ends with the words that precede a value in its needle
    ("... for KEY is:"), so the value can be found by matching them."""
    keys, values = set(), set()
    if kind == "niah_single":
        k, v = _key(rng, keys), _value(rng, values)
        return ([_needle(k, v)], f"What is the special magic number for {k} mentioned in the provided text? Answer with "
                "the number only.", [v], f"The special magic number for {k} is:")
    if kind == "niah_single_word":
        k, v = _key(rng, keys), rng.choice(VALUE_WORDS)
        return ([f"One of the special magic words for {k} is: {v}. "],
                f"What is the special magic word for {k} mentioned in the provided text? Answer with the word only.",
                [v], f"The special magic word for {k} is:")
    if kind == "niah_multikey":
        k, v = _key(rng, keys), _value(rng, values)
        needles = [_needle(_key(rng, keys), _value(rng, values)) for _ in range(rng.randint(2, 4))] + [_needle(k, v)]
        rng.shuffle(needles)
        return (needles, f"What is the special magic number for {k} mentioned in the provided text? Answer with the "
                "number only.", [v], f"The special magic number for {k} is:")
    if kind == "niah_multivalue":
        k = _key(rng, keys)
        vs = [_value(rng, values) for _ in range(rng.randint(2, 4))]
        return ([_needle(k, v) for v in vs],
                (f"What are all the special magic numbers for {k} mentioned in the provided text? Answer with the "
                "numbers only."), vs, f"The special magic numbers for {k} are:")
    if kind == "niah_multiquery":
        ks = [_key(rng, keys) for _ in range(rng.randint(2, 4))]
        vs = [_value(rng, values) for _ in ks]
        needles = [_needle(k, v) for k, v in zip(ks, vs)]
        rng.shuffle(needles)
        return (needles, (f"What are the special magic numbers for {', '.join(ks[:-1])} and {ks[-1]} mentioned in "
                         "the provided text? Answer with the numbers only."), vs,
                f"The special magic numbers for {', '.join(ks[:-1])} and {ks[-1]} are:")
    if kind == "variable_tracking":
        names: set = set()
        chains = []
        for _ in range(rng.randint(1, 3)):  # the first chain is asked about, the others distract
            start = _value(rng, values)[:5]
            chain = [_var(rng, names) for _ in range(rng.randint(2, 4))]
            chains.append((start, chain))
        target_value, target = chains[0]
        lines = []  # keep each chain's assignments in order, interleaving chains
        pending = [[f"VAR {c[0]} = {v}. "] + [f"VAR {c[i]} = VAR {c[i - 1]}. " for i in range(1, len(c))]
                   for v, c in chains]
        while any(pending):
            lines.append(rng.choice([p for p in pending if p]).pop(0))
        return (lines, (f"Find all variables that are assigned the value {target_value} in the text above. Answer with "
                       "the variable names only."), target, f"The variables assigned the value {target_value} are:")
    raise ValueError(f"unknown retrieval kind {kind!r}; choose from {', '.join(KINDS)}")


def _filler_units(haystack: list[str] | None) -> list[str]:
    if not haystack:
        return [NOISE]
    units = []
    for text in haystack:
        units += [p.strip() + "\n\n" for p in text.split("\n\n") if p.strip()]
    if not units:
        raise ValueError("haystack texts are empty")
    return units


def _assemble(units: list[str], needles: list[str], depths: list[int], question: str) -> str:
    parts = list(units)
    for depth, needle in sorted(zip(depths, needles), key=lambda x: x[0], reverse=True):
        parts.insert(depth, needle)
    return "".join(parts) + f"\n\n{question}"


def make_retrieval(rng: random.Random, kind: str = "niah_single", length: int = 4096, tokenizer=None,
                   haystack: list[str] | None = None, think: bool = False) -> dict:
    """One long-context example of about `length` tokens (see the module docstring)."""
    needles, question, answers, prefix = _needles(rng, kind)
    pool = _filler_units(haystack)

    def count(text: str) -> int:
        return len(tokenizer.encode(text)) if tokenizer is not None else len(text) // 4

    overhead = count("".join(needles) + f"\n\n{question}")
    budget = length - overhead
    units, used, start = [], 0, rng.randrange(len(pool))
    unit_cost = {}
    while True:  # cycle through the haystack from a random place until the budget is spent
        u = pool[(start + len(units)) % len(pool)]
        if u not in unit_cost:
            unit_cost[u] = count(u)
        if used + unit_cost[u] > budget:
            break
        units.append(u)
        used += unit_cost[u]
        if unit_cost[u] == 0:
            raise ValueError("a haystack text has no tokens")
    depths = sorted(rng.randint(0, len(units)) for _ in needles)
    text = _assemble(units, needles, depths, question)
    if tokenizer is not None:  # token counts of pieces do not add up exactly: trim until it fits
        while units and count(text) > length:
            units.pop()
            depths = [min(d, len(units)) for d in depths]
            text = _assemble(units, needles, depths, question)
    reply = ", ".join(answers)
    if think:
        reply = "<think>\nI look through the text for the question's items.\n</think>\n" + reply
    return {"messages": [{"role": "user", "content": text}, {"role": "assistant", "content": reply}],
            "chat_template_kwargs": {"enable_thinking": think}, "task": kind, "answer": answers, "answer_prefix": prefix,
            "length": count(text)}


def retrieval_prompt(example: dict) -> str:
    """The plain-text prompt of an example for a base (non-chat) model: the user turn, then "\\nAnswer: " and the
    answer prefix (RULER's base-model form, "The special magic number for KEY is:"). Evaluation (`smollm3 eval
    --mode base`) prompts with exactly this and training documents start with it, so the two agree."""
    prefix = example.get("answer_prefix")
    return example["messages"][0]["content"] + "\nAnswer:" + (f" {prefix}" if prefix else "")


def retrieval_document(example: dict) -> str:
    """The example as a pretraining document: retrieval_prompt(example), a space, the answers joined by ", "."""
    return retrieval_prompt(example) + " " + ", ".join(str(a) for a in example["answer"])


def check_retrieval(example: dict, response: str) -> bool:
    """RULER's string-match-all: every expected value appears in the answer."""
    text = answer_text(response)
    return all(str(a) in text for a in example["answer"])
