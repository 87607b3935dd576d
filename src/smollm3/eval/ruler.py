"""RULER-style long-context retrieval in `smollm3 eval`: tasks `ruler:KIND:LENGTH`.

Items come from `smollm3.data.synthetic.generate(KIND, N, seed=0, length=..., tokenizer=...)`, i.e.
`synthetic_long.make_retrieval` with a fixed seed, so a task is the same set every run (50 items unless --limit).
LENGTH counts the whole sequence as RULER does: the prompt as the model sees it (template or BOS included) plus the
tokens allowed for the answer fit in LENGTH, so `ruler:niah_single:64k` runs on a 65,536-position model. The
haystack is sized to fill what the template and the answer leave.

Prompts: `--mode base` uses `synthetic_long.retrieval_prompt(item)` (the user turn + "\\nAnswer: " + the answer prefix, "The special
magic number for KEY is:", as RULER prompts base models; the same text
training documents are made of, see `retrieval_document`), encoded with the tokenizer's BOS, and generation stops
at a newline or EOS. `think` / `no_think` render the user turn with the chat template like the other generative
tasks. Generation is greedy on the batched engine; a response is right when every expected value appears in it
after any </think> (RULER's string-match-all, `synthetic_long.check_retrieval`). Scores: accuracy, n, length.
"""

from __future__ import annotations

from smollm3.data import synthetic
from smollm3.data.synthetic_long import check_retrieval, retrieval_prompt
from smollm3.eval.tasks import EvalError, Task, render_prompt
from smollm3.infer.sampling import SamplingParams

DEFAULT_ITEMS = 50
ANSWER_TOKENS = 64  # base / no_think: at most four 7-digit numbers or five variable names, with separators
SLACK = 4  # a token can merge across each boundary of the user turn, so its count inside the prompt may differ


def answer_budget(mode: str, max_tokens: int) -> int:
    """New tokens a retrieval answer may use: a short cap unless the model thinks first (then --max-tokens)."""
    return max_tokens if mode == "think" else min(max_tokens, ANSWER_TOKENS)


def prompt_text(item: dict, mode: str, template: str) -> str:
    if mode == "base":
        return retrieval_prompt(item)
    return render_prompt(item["messages"][:-1], template, mode)  # the last message is the reference answer


def encode(tokenizer, prompt: str, mode: str) -> list[int]:
    # base: plain text with the tokenizer's own BOS (where it adds one); chat: the template wrote the special tokens
    return tokenizer.encode(prompt, add_special_tokens=mode == "base")


def make_items(task: Task, limit: int | None, mode: str, template: str, tokenizer,
               max_tokens: int) -> tuple[list[dict], list[str]]:
    """(items, prompts) with every prompt's tokens + the answer budget <= task.length."""
    answer = answer_budget(mode, max_tokens)
    # a typical base-mode answer prefix counts as overhead too (the loop below absorbs longer ones)
    probe = {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "x"}],
             "answer_prefix": "The special magic number for amber-basil is:"}
    overhead = len(encode(tokenizer, prompt_text(probe, mode, template), mode)) - len(tokenizer.encode("x"))
    user_len = task.length - answer - overhead - SLACK
    for _ in range(8):  # base prompts end with an answer prefix naming the key: shrink the haystack by what it took
        items = synthetic.generate(task.generator, limit or DEFAULT_ITEMS, seed=0, length=max(user_len, 1),
                                   tokenizer=tokenizer, think=mode == "think")
        prompts = [prompt_text(item, mode, template) for item in items]
        longest = max(len(encode(tokenizer, p, mode)) for p in prompts)
        if longest + answer <= task.length or user_len <= 1:
            break
        user_len -= max(longest + answer - task.length, 8)  # the haystack shrinks by whole sentences
    if longest + answer > task.length:  # the needles and question alone do not fit
        raise EvalError(f"task {task.name!r}: {task.length} tokens leave no room for the haystack (the longest prompt "
                        f"is {longest} tokens, the template takes {overhead}, the answer {answer}); "
                        "use a longer LENGTH" + (" or a smaller --max-tokens" if mode == "think" else ""))
    return items, prompts


def run_ruler(llm, task: Task, items: list[dict], prompts: list[str], mode: str,
              max_tokens: int) -> tuple[dict, list[dict]]:
    ids = [encode(llm.tokenizer, p, mode) for p in prompts]
    # a base model continues the document past its answer: the answer ends at the line's end
    stop = ["\n"] if mode == "base" else []
    outs = llm.generate(ids, SamplingParams(max_tokens=answer_budget(mode, max_tokens), temperature=0.0, stop=stop))
    samples, correct = [], 0
    for item, prompt, p_ids, out in zip(items, prompts, ids, outs):
        ok = check_retrieval(item, out.text)
        correct += ok
        # the prompt is up to LENGTH tokens: its tail (the question) is enough to tell the items apart
        samples.append({"prompt_tokens": len(p_ids), "prompt_tail": prompt[-300:], "response": out.text,
                        "answer": item["answer"], "correct": ok, "finish_reason": out.finish_reason})
    return {"accuracy": correct / len(items), "n": len(items), "length": task.length}, samples
