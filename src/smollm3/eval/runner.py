"""Run evaluation tasks on a model directory and write the results JSON (scores, configuration, timings).

    results = run_eval("path/to/model", parse_tasks("arithmetic,mc:items.jsonl"), mode="no_think", limit=50)

Log-likelihoods come from our model's forward (one batched forward per multiple-choice item); generation runs on
the batched engine (smollm3.infer.llm.LLM), greedy. `yarn=FACTOR` loads the model with YaRN rope scaling for
contexts beyond its positions, both paths alike.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

import smollm3
from smollm3.checkpoint import load_config
from smollm3.data import synthetic
from smollm3.data.packing import IGNORE_INDEX
from smollm3.eval import ruler
from smollm3.eval.humaneval import load_problems, run_humaneval
from smollm3.model import change_config
from smollm3.eval.tasks import (GENERATING_KINDS, EvalError, Task, expand, extract_answer, gen_items, is_correct,
                                load_mc, load_texts, render_prompt)
from smollm3.eval.toolcall import run_tool, tool_prompt
from smollm3.infer.llm import LLM
from smollm3.infer.sampling import SamplingParams

# think / no_think: chat models, prompts through the chat template; base: pretrained models, plain-text prompts
MODES = ("think", "no_think", "base")
DEFAULT_TOOL_ITEMS = 50
NOT_METRICS = ("kind", "n", "length")  # labels and counts in a task's results, not scores


# ------------------------------------------------------------------------------------------------------------------
# log-likelihoods


def _context_ids(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=True)


def _split(tokenizer, query: str, choice: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) as lighteval does: tokenize query+choice together and take the tokens after
    the query's; when a token merges across the boundary, tokenize the choice on its own instead."""
    ctx = _context_ids(tokenizer, query)
    whole = _context_ids(tokenizer, query + choice)
    if whole[:len(ctx)] == ctx and len(whole) > len(ctx):
        return ctx, whole[len(ctx):]
    return ctx, tokenizer.encode(choice)


@torch.no_grad()
def loglikelihoods(model, tokenizer, query: str, choices: list[str]) -> list[float]:
    """Sum of log p(choice tokens | query) for each choice, from one right-padded forward over all choices."""
    pairs = [_split(tokenizer, query, c) for c in choices]
    if any(not ctx for ctx, _ in pairs):
        raise EvalError(f"query {query[:40]!r} encodes to no tokens; nothing to condition on")
    T = max(len(ctx) + len(cont) for ctx, cont in pairs)
    ids = torch.zeros(len(pairs), T, dtype=torch.long)  # right padding: causal attention never looks ahead
    labels = torch.full((len(pairs), T), IGNORE_INDEX, dtype=torch.long)
    for i, (ctx, cont) in enumerate(pairs):
        row = ctx + cont
        ids[i, :len(row)] = torch.tensor(row)
        # labels[t] is the token position t predicts: the continuation, predicted from the last context token on
        labels[i, len(ctx) - 1:len(row) - 1] = torch.tensor(cont)
    device = next(model.parameters()).device
    nll = model(ids.to(device), labels=labels.to(device))  # [B, T] fp32, 0 where ignored
    return [-float(x) for x in nll.double().sum(-1)]


def run_mc(model, tokenizer, task: Task, limit: int | None) -> tuple[dict, list[dict]]:
    items = load_mc(task.path, limit)
    correct = correct_norm = 0
    samples = []
    for item in items:
        ll = loglikelihoods(model, tokenizer, item["query"], item["choices"])
        # acc_norm: per character of the choice, so long answers are not penalised for their length
        norm = [x / len(c) for x, c in zip(ll, item["choices"])]
        pred, pred_norm = max(range(len(ll)), key=ll.__getitem__), max(range(len(ll)), key=norm.__getitem__)
        correct += pred == item["gold"]
        correct_norm += pred_norm == item["gold"]
        samples.append({**item, "loglikelihoods": ll, "pred": pred, "pred_norm": pred_norm})
    n = len(items)
    return {"acc": correct / n, "acc_norm": correct_norm / n, "n": n}, samples


@torch.no_grad()
def run_ppl(model, tokenizer, task: Task, limit: int | None, window: int = 2048) -> tuple[dict, list[dict]]:
    """Token NLL over each text in non-overlapping windows; bits-per-byte = total NLL (nats) / ln 2 / UTF-8 bytes,
    which (unlike perplexity) compares across tokenizers."""
    texts = load_texts(task.path, limit)
    device = next(model.parameters()).device
    total_nll, total_tokens, total_bytes, samples = 0.0, 0, 0, []
    for text in texts:
        ids = _context_ids(tokenizer, text)
        # without a BOS the first token has no context: it is not scored (its bytes still count)
        nll = 0.0
        for start in range(0, len(ids) - 1, window - 1):
            chunk = torch.tensor(ids[start:start + window])[None]
            labels = torch.full_like(chunk, IGNORE_INDEX)
            labels[0, :-1] = chunk[0, 1:]
            nll += float(model(chunk.to(device), labels=labels.to(device)).double().sum())
        n_bytes = len(text.encode("utf-8"))
        total_nll, total_tokens, total_bytes = total_nll + nll, total_tokens + len(ids) - 1, total_bytes + n_bytes
        samples.append({"text": text[:200], "nll": nll, "tokens": len(ids) - 1, "bytes": n_bytes})
    return {"bits_per_byte": total_nll / math.log(2) / total_bytes,
            "perplexity": math.exp(total_nll / max(total_tokens, 1)), "n": len(texts)}, samples


# ------------------------------------------------------------------------------------------------------------------
# generation


def base_prompt(item: dict) -> str:
    """A synthetic question as plain text for a base model, in the form of synthetic_long.retrieval_prompt."""
    return item["messages"][0]["content"] + "\nAnswer:"


def gen_prompts(task: Task, limit: int | None, mode: str, template: str) -> tuple[list[dict], list[str]]:
    if task.kind == "humaneval":  # raw completion of the problem's code: no chat template (see humaneval.py)
        problems = load_problems(limit)
        return problems, [p["prompt"] for p in problems]
    if task.kind == "tool":
        items = synthetic.generate(task.generator, limit or DEFAULT_TOOL_ITEMS, seed=0, think=mode == "think")
        return items, [tool_prompt(item, template, mode) for item in items]
    items = gen_items(task, limit, think=mode == "think")
    if mode == "base":
        return items, [base_prompt(item) for item in items]
    # the last message is the reference answer; the model sees everything before it
    return items, [render_prompt(item["messages"][:-1], template, mode) for item in items]


def run_gen(llm, items: list[dict], prompts: list[str], max_tokens: int,
            mode: str = "no_think") -> tuple[dict, list[dict]]:
    # chat: the template already wrote any special tokens the model expects, so encode the text as is;
    # base: plain text with the tokenizer's BOS, and the answer ends at the line's end
    base = mode == "base"
    ids = [llm.tokenizer.encode(p, add_special_tokens=base) for p in prompts]
    outs = llm.generate(ids, SamplingParams(max_tokens=max_tokens, temperature=0.0, stop=["\n"] if base else []))
    samples, correct = [], 0
    for item, prompt, out in zip(items, prompts, outs):
        ok = is_correct(item, out.text)
        correct += ok
        samples.append({"prompt": prompt, "response": out.text, "extracted": extract_answer(out.text),
                        "answer": str(item["answer"]), "correct": ok, "finish_reason": out.finish_reason})
    return {"exact_match": correct / len(items), "n": len(items)}, samples


# ------------------------------------------------------------------------------------------------------------------
# the whole run


def yarn_overrides(config, factor: float) -> dict:
    """RoPE fields that turn on YaRN x`factor` for a model with `config` (a ModelConfig), as SmolLM3 reaches 128k from
    64k: rope_scaling {yarn, factor, original_max_position_embeddings = its positions}, positions x factor."""
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not factor > 1:
        raise EvalError(f"--yarn FACTOR must be a number > 1 (2 doubles the context), got {factor!r}")
    if config.rope_scaling is not None:
        s = config.rope_scaling
        raise EvalError(f"the model already uses YaRN (factor {s['factor']:g}, {s['original_max_position_embeddings']} "
                        f"-> {config.max_position_embeddings} positions); drop --yarn")
    positions = config.max_position_embeddings
    return {"rope_scaling": {"rope_type": "yarn", "factor": float(factor), "original_max_position_embeddings": positions},
            "max_position_embeddings": int(round(positions * factor))}


def load_model(model: str | Path, *, yarn: float | None = None, device: str = "cpu", dtype=torch.float32):
    """The model as the log-likelihood tasks score it: load_pretrained, with YaRN x`yarn` when given."""
    lm = smollm3.load_pretrained(model, device=device, dtype=dtype)
    if yarn is not None:
        change_config(lm, **yarn_overrides(lm.config, yarn))
    return lm


def _check_fits(encoded: dict, budgets: dict, positions: int | None, max_model_len: int | None,
                yarn: float | None):
    """A prompt that cannot fit is an error naming the option to change, before any model time is spent."""
    for name, lengths in encoded.items():
        longest = max(lengths)
        if max_model_len is not None and longest >= max_model_len:
            raise EvalError(f"task {name!r}: a prompt has {longest} tokens but --max-model-len is {max_model_len}; "
                            f"raise --max-model-len to at least {longest + budgets[name]}")
        if positions is not None and longest >= positions:
            raise EvalError(f"task {name!r}: a prompt has {longest} tokens but the model has {positions} positions; "
                            f"pass {_yarn_hint(longest + budgets[name], positions, yarn)} (YaRN rope scaling)")


def _yarn_hint(need: int, positions: int, yarn: float | None) -> str:
    return "a larger --yarn FACTOR" if yarn else f"--yarn {-(-need // positions)}"  # the smallest whole factor


def run_eval(model: str | Path, tasks: list[Task], *, mode: str = "no_think", limit: int | None = None,
             max_tokens: int = 512, chat_template: str | None = None, max_model_len: int | None = None,
             device: str = "cpu", dtype=torch.float32, samples_path: str | Path | None = None,
             yarn: float | None = None) -> dict:
    """Evaluate `model` (an HF directory) on `tasks`; -> the results dict (see docs/eval.md). `yarn`: load with YaRN
    rope scaling of that factor (positions x factor), as if config.json said so."""
    if mode not in MODES:
        raise EvalError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if limit is not None and limit < 1:
        raise EvalError(f"limit must be >= 1, got {limit}")
    model = Path(model)
    tasks = expand(tasks)
    if mode == "base" and any(t.kind == "tool" for t in tasks):
        raise EvalError("tool tasks need a chat template to show the tools; use --mode think or no_think for them")
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    model_cfg = load_config(model) if (model / "config.json").is_file() else None
    if yarn is not None and model_cfg is None:
        raise EvalError(f"--yarn needs an HF model directory with a config.json; {model} has none")
    overrides = yarn_overrides(model_cfg, yarn) if yarn is not None else None
    positions = overrides["max_position_embeddings"] if overrides else \
        model_cfg.max_position_embeddings if model_cfg else None
    if max_model_len is not None and positions is not None and max_model_len > positions:
        # the engine would turn YaRN on by itself; here the factor is a choice the results should record
        raise EvalError(f"--max-model-len {max_model_len} exceeds the model's {positions} positions; lower it or pass "
                        f"{_yarn_hint(max_model_len, positions, yarn)} (YaRN rope scaling)")
    for task in tasks:  # before the (slow, at 128k) item generation
        if task.kind != "ruler":
            continue
        if max_model_len is not None and task.length > max_model_len:
            raise EvalError(f"task {task.name!r} needs {task.length} tokens but --max-model-len is {max_model_len}; "
                            f"raise --max-model-len to {task.length} or choose a shorter LENGTH")
        if positions is not None and task.length > positions:
            raise EvalError(f"task {task.name!r} needs {task.length} tokens but the model has {positions} positions; "
                            f"pass {_yarn_hint(task.length, positions, yarn)} (YaRN rope scaling) or choose a "
                            "shorter LENGTH")

    tokenizer = smollm3.load_tokenizer(model)
    gen = [t for t in tasks if t.kind in GENERATING_KINDS]
    template = chat_template or tokenizer.chat_template or "smollm3"
    if chat_template and Path(chat_template).is_file():
        template = Path(chat_template).read_text()
    prompts, budgets, encoded = {}, {}, {}
    for t in gen:
        if t.kind == "ruler":
            prompts[t.name] = ruler.make_items(t, limit, mode, template, tokenizer, max_tokens)
            budgets[t.name] = ruler.answer_budget(mode, max_tokens)
        else:
            prompts[t.name], budgets[t.name] = gen_prompts(t, limit, mode, template), max_tokens
        # (+1: raw-completion prompts such as HumanEval's are encoded with the tokenizer's BOS, if it has one)
        encoded[t.name] = [len(tokenizer.encode(p)) + 1 for p in prompts[t.name][1]]
    _check_fits(encoded, budgets, positions, max_model_len, yarn)
    if gen:
        if max_model_len is None:
            # a KV cache just long enough for these prompts (the default, the model's full context, costs GiBs)
            need = max(max(lengths) + budgets[name] for name, lengths in encoded.items())
            max_model_len = min(need, positions or need)
        llm = LLM(model, device=device, dtype=dtype, max_model_len=max_model_len,
                  max_num_seqs=max(len(ps) for _, ps in prompts.values()), config_overrides=overrides)
        lm, tokenizer = llm.model, llm.tokenizer
    else:
        llm, lm = None, load_model(model, yarn=yarn, device=device, dtype=dtype)
    timings["load_s"] = time.perf_counter() - t0

    results, all_samples = {}, []
    for task in tasks:
        t = time.perf_counter()
        if task.kind == "mc":
            scores, samples = run_mc(lm, tokenizer, task, limit)
        elif task.kind == "ppl":
            scores, samples = run_ppl(lm, tokenizer, task, limit)
        elif task.kind == "humaneval":
            scores, samples = run_humaneval(llm, *prompts[task.name], max_tokens)
        elif task.kind == "tool":
            scores, samples = run_tool(llm, *prompts[task.name], max_tokens)
        elif task.kind == "ruler":
            scores, samples = ruler.run_ruler(llm, task, *prompts[task.name], mode, max_tokens)
        else:
            scores, samples = run_gen(llm, *prompts[task.name], max_tokens, mode)
        timings[task.name] = time.perf_counter() - t
        results[task.name] = {"kind": task.kind, **scores}
        all_samples += [{"task": task.name, **s} for s in samples]
    timings["total_s"] = time.perf_counter() - t0

    if samples_path is not None:
        with open(samples_path, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(s, ensure_ascii=False) + "\n" for s in all_samples)
    templated = mode != "base" and any(t.kind != "humaneval" for t in gen)  # HumanEval and base use no template
    config = {"model": str(model), "tasks": [t.name for t in tasks], "mode": mode, "limit": limit,
              "max_tokens": max_tokens, "temperature": 0.0, "device": str(device), "dtype": str(dtype),
              "chat_template": (chat_template or "model's own") if templated else None,
              "yarn": overrides["rope_scaling"] if overrides else None,
              "smollm3": smollm3.__version__, "torch": torch.__version__}
    return {"results": results, "config": config, "timings": timings}


def format_table(results: dict) -> str:
    rows = [("task", "metric", "value", "n")]
    for name, scores in results["results"].items():
        for metric, value in scores.items():
            if metric not in NOT_METRICS:
                rows.append((name, metric, f"{value:.4f}", str(scores["n"])))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
