"""The evaluation batteries a recipe runs on its stages' checkpoints (the `evaluation:` section of a recipe YAML).

    base   validation loss (nats/token) and bits-per-byte on every held-out file (per language and domain), in
           windows of the pretraining length; RULER-style retrieval accuracy at several lengths, base-mode
           prompts, and with YaRN at the lengths listed under `yarn`
    chat   everything in base, plus: math exact match in think and in no_think mode on held-out questions; tool-call
           correctness (parses / right function / right arguments); the chosen-over-rejected log-probability
           margin on held-out preference pairs

Each checkpoint's results are cached in OUT/eval/<label>.json, so a rerun only evaluates what is new.
"""

from __future__ import annotations

import json
import math
import os
import random
from datetime import date as Date
from pathlib import Path

import torch

from smollm3.checkpoint import load_config, load_pretrained
from smollm3.data import synthetic
from smollm3.data.packing import IGNORE_INDEX
from smollm3.data.preference import load_preferences, tokenize_pair
from smollm3.data.synthetic_long import make_retrieval
from smollm3.eval.runner import run_eval, run_gen, run_ppl, yarn_overrides
from smollm3.eval.tasks import Task, get_task, render_prompt
from smollm3.eval.toolcall import run_tool, tool_prompt
from smollm3.infer.llm import LLM
from smollm3.recipe.build import with_system
from smollm3.recipe.spec import final_checkpoint, resolve, step_checkpoint
from smollm3.tokenizer import load_tokenizer


def checkpoints_to_evaluate(recipe: dict, out: Path) -> list[tuple[str, str, Path]]:
    """(label, battery, HF dir) for every stage with `eval:`, intermediate `evaluate:` steps first."""
    rows = []
    for stage in recipe["stages"]:
        battery = stage.get("eval")
        if not battery:
            continue
        for label, step in (stage.get("evaluate") or {}).items():
            rows.append((f"{stage['name']}/{label}", battery, step_checkpoint(out, stage, int(step))))
        rows.append((stage["name"], battery, final_checkpoint(out, stage)))
    return rows


def heldout_losses(model, tokenizer, heldout: Path, window: int, max_docs: int | None) -> dict:
    scores = {}
    for path in sorted(heldout.rglob("*.jsonl")):
        name = path.relative_to(heldout).with_suffix("").as_posix()
        s, _ = run_ppl(model, tokenizer, Task(f"ppl:{name}", "ppl", path=path), max_docs, window=window)
        scores[name] = {"loss": math.log(s["perplexity"]), "bits_per_byte": s["bits_per_byte"]}
    return scores


@torch.no_grad()
def plain_text_predictions(model, tokenizer, heldout: Path, window: int, max_docs: int | None) -> dict:
    """How a model predicts plain held-out text, beside its loss: the mean entropy of its next-token distribution
    (nats) and the mean probability it puts on the tokenizer's added tokens (special tokens, chat-template markup).
    A chat model whose loss is far above its entropy is confidently wrong, not lost."""
    added = sorted(tokenizer.tok.get_added_tokens_decoder())
    entropy = mass = n = 0.0
    for path in sorted(heldout.rglob("*.jsonl")):
        with open(path, encoding="utf-8") as f:
            texts = [json.loads(line)["text"] for line in f if line.strip()][:max_docs]
        for text in texts:
            ids = tokenizer.encode(text)
            for start in range(0, len(ids) - 1, window - 1):
                chunk = torch.tensor(ids[start:start + window])[None]
                logp = torch.log_softmax(model(chunk).float()[0, :-1], dim=-1)
                p = logp.exp()
                entropy += float(-(p * logp).sum())
                mass += float(p[:, added].sum())
                n += logp.shape[0]
    return {"entropy": entropy / max(n, 1), "template_mass": mass / max(n, 1)}


def retrieval(model_dir: Path, spec: dict) -> dict:
    """{"<kind>@<length>[+yarn]": accuracy}"""
    n = spec.get("n", 50)
    runs = [(length, None) for length in spec.get("lengths", [])]
    yarn = spec.get("yarn") or {}
    runs += [(length, yarn["factor"]) for length in yarn.get("lengths", [])]
    scores = {}
    for kind in spec.get("kinds", ["niah_single"]):
        for length, factor in runs:
            # a 7-digit answer is ~8 tokens: a short answer budget leaves the haystack the rest of LENGTH
            r = run_eval(model_dir, [get_task(f"ruler:{kind}:{length}")], mode="base", limit=n, yarn=factor,
                         max_tokens=spec.get("max_tokens", 16))
            acc = next(iter(r["results"].values()))["accuracy"]
            scores[f"{kind}@{length}" + (f"+yarn{factor:g}" if factor else "")] = acc
    return scores


def chat_retrieval(model_dir: Path, spec: dict, date: Date | None = None) -> dict:
    """{"<kind>@<length>[+yarn]": accuracy} for a chat model: the RULER question as the user turn (after spec's
    `system` message), answered in no_think mode, at spec's `lengths` and with YaRN at `yarn.lengths`. LENGTH counts
    the whole prompt and the answer budget, template included."""
    n, system, budget = spec.get("n", 50), spec.get("system"), spec.get("max_tokens", 16)
    yarn = spec.get("yarn") or {}
    runs = [(length, None) for length in spec.get("lengths", [])]
    runs += [(length, yarn["factor"]) for length in yarn.get("lengths", [])]
    scores = {}
    for factor in dict.fromkeys(f for _, f in runs):
        overrides = yarn_overrides(load_config(model_dir), factor) if factor else None
        llm = LLM(model_dir, device="cpu", dtype=torch.float32, max_num_seqs=n, config_overrides=overrides)
        empty = with_system({"messages": [{"role": "user", "content": ""}]}, system)["messages"]
        overhead = len(llm.tokenizer.encode(render_prompt(empty, llm.chat_template, "no_think", date)))
        for kind in spec.get("kinds", ["niah_single"]):
            for length in (length for length, f in runs if f == factor):
                rng = random.Random(f"chat-retrieval:{kind}:{length}")
                items = [with_system(make_retrieval(rng, kind, length=length - overhead - budget,
                                                    tokenizer=llm.tokenizer), system) for _ in range(n)]
                prompts = [render_prompt(it["messages"][:-1], llm.chat_template, "no_think", date) for it in items]
                s, _ = run_gen(llm, items, prompts, budget)
                scores[f"{kind}@{length}" + (f"+yarn{factor:g}" if factor else "")] = s["exact_match"]
    return scores


def math_modes(model_dir: Path, items_path: Path, max_tokens: int, date: Date | None = None) -> dict:
    items = [json.loads(line) for line in open(items_path, encoding="utf-8") if line.strip()]
    # the KV cache spans the model's positions: the SmolLM3 template's system turn alone is hundreds of tokens
    llm = LLM(model_dir, device="cpu", dtype=torch.float32, max_num_seqs=len(items))
    scores = {}
    for mode in ("think", "no_think"):
        prompts = [render_prompt(it["messages"][:-1], llm.chat_template, mode, date) for it in items]
        s, _ = run_gen(llm, items, prompts, max_tokens)
        scores[mode] = s["exact_match"]
    return scores | {"n": len(items)}


def tool_calls(model_dir: Path, n: int, max_tokens: int, offered: int | None, system: str | None,
               date: Date | None = None) -> dict:
    llm = LLM(model_dir, device="cpu", dtype=torch.float32, max_num_seqs=n)
    scores = {}
    for style in ("tool_xml", "tool_python"):
        items = [with_system(it, system) for it in  # seeds the SFT data does not use
                 synthetic.generate(style, n, seed=1000, think=False, offered=offered)]
        s, _ = run_tool(llm, items, [tool_prompt(it, llm.chat_template, "no_think", date) for it in items], max_tokens)
        scores[style] = {k: v for k, v in s.items() if k != "n"}
    return scores


@torch.no_grad()
def preference_margin(model, tokenizer, pairs_path: Path, template: str) -> dict:
    """Mean log p(chosen) - log p(rejected) over held-out pairs (completions only, given the prompt), and the share
    of pairs where chosen is the more likely: what APO is meant to raise."""
    margins = []
    for ex in load_preferences([pairs_path]):
        pair = tokenize_pair(tokenizer, ex, template=template)
        lps = []
        for completion in (pair.chosen, pair.rejected):
            ids = torch.tensor([pair.prompt + completion])
            labels = torch.full_like(ids, IGNORE_INDEX)
            labels[0, len(pair.prompt) - 1:-1] = torch.tensor(completion)
            lps.append(-float(model(ids, labels=labels).double().sum()))
        margins.append(lps[0] - lps[1])
    return {"margin": sum(margins) / len(margins), "chosen_wins": sum(m > 0 for m in margins) / len(margins)}


def evaluate_checkpoint(model_dir: Path, battery: str, spec: dict, date: Date | None = None) -> dict:
    """`date`: the "Today Date" of every chat prompt (the recipe's `date:`; default today)."""
    model = load_pretrained(model_dir, device="cpu", dtype=torch.float32).eval()
    tokenizer = load_tokenizer(model_dir)
    base = spec.get("base", {})
    results = {"heldout": heldout_losses(model, tokenizer, Path(base["heldout"]), base.get("window", 2048),
                                         base.get("max_docs"))}
    chat = spec.get("chat", {})
    if battery == "chat" and chat.get("retrieval"):  # a chat model is asked in its own format
        results["retrieval"] = chat_retrieval(model_dir, chat["retrieval"], date)
    elif base.get("retrieval"):
        results["retrieval"] = retrieval(model_dir, base["retrieval"])
    if battery == "chat":
        results["plain_text"] = plain_text_predictions(model, tokenizer, Path(base["heldout"]), base.get("window", 2048),
                                                       min(base.get("max_docs") or 2, 2))  # a diagnostic: 2 a file
        if chat.get("math"):
            results["math"] = math_modes(model_dir, Path(chat["math"]["items"]), chat["math"].get("max_tokens", 64),
                                         date)
        if chat.get("tools"):
            t = chat["tools"]
            results["tools"] = tool_calls(model_dir, t.get("n", 50), t.get("max_tokens", 96), t.get("offered"),
                                          t.get("system"), date)
        if chat.get("preference"):
            results["preference"] = preference_margin(model, tokenizer, Path(chat["preference"]["pairs"]),
                                                      chat["preference"].get("template", "smollm3"))
    return results


def evaluate_stages(recipe: dict, out: Path, log=print) -> dict:
    """{label: results} for every checkpoint the recipe evaluates; cached per checkpoint under OUT/eval."""
    spec = resolve(recipe["evaluation"], out, {s["name"]: s for s in recipe["stages"]})
    cache = out / "eval"
    cache.mkdir(exist_ok=True)
    date = Date.fromisoformat(recipe["date"]) if recipe.get("date") else None  # the recipe's pinned day, if any
    results = {}
    for label, battery, model_dir in checkpoints_to_evaluate(recipe, out):
        path = cache / f"{label.replace('/', '__')}.json"
        if path.exists() and json.loads(path.read_text()).get("model") == str(model_dir):
            results[label] = json.loads(path.read_text())["results"]
            continue
        log(f"evaluate {label} ({battery})")
        results[label] = evaluate_checkpoint(model_dir, battery, spec, date)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({"model": str(model_dir), "battery": battery, "results": results[label]}, indent=1))
        os.replace(tmp, path)
    return results
