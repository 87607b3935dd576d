"""`smollm3 eval` and `smollm3 eval compare` (docs/eval.md)."""

from __future__ import annotations

import json
from pathlib import Path

from smollm3.cli import device, dtype_for


def add(sub, name, help):
    _add_eval(sub, help)


def _add_eval(sub, help):
    from smollm3.data.synthetic_long import KINDS
    from smollm3.eval.tasks import available

    p = sub.add_parser("eval", help=help,
                       usage="smollm3 eval --model DIR --tasks NAME,... --out FILE.json [options]\n"
                             "       smollm3 eval compare A.json B.json",
                       description="Run evaluation tasks on a model, print a table and write per-task scores, the "
                                   "configuration and timings as JSON. Tasks: " + ", ".join(available()) +
                                   f" (KIND: {', '.join(KINDS)}; LENGTH in tokens: 1024, 4k, 128k; ppl:DIR scores every *.jsonl "
                                   "under DIR on its own). `smollm3 eval compare A.json B.json` prints per-task "
                                   "deltas. lm-evaluation-harness: python -m smollm3.eval.lm_eval_adapter. "
                                   "See docs/eval.md.")
    # --model/--tasks/--out are checked in _run_eval, not by argparse, so that `eval compare` needs none of them
    p.add_argument("--model", help="HF model directory (required)")
    p.add_argument("--tasks", help="comma-separated task names (required)")
    p.add_argument("--mode", choices=["think", "no_think", "base"], default="no_think",
                   help="think/no_think: enable_thinking in the chat template for generative tasks; base: plain-text "
                        "prompts for pretrained (non-chat) models, answers end at a newline (default: no_think)")
    p.add_argument("--limit", type=int, default=None,
                   help="first N items of each task (generative and ruler default: 50)")
    p.add_argument("--max-tokens", type=int, default=512,
                   help="longest generated answer (ruler: at most 64 unless --mode think)")
    p.add_argument("--max-model-len", type=int, default=None,
                   help="KV cache length (default: what the prompts need); at most the model's positions")
    p.add_argument("--yarn", type=float, default=None, metavar="FACTOR",
                   help="load with YaRN rope scaling: positions x FACTOR (e.g. 2 takes a 64k model to 128k)")
    p.add_argument("--chat-template", default=None,
                   help="template name (smollm3, official) or a .jinja file (default: the model's own)")
    p.add_argument("--out", help="results JSON (required)")
    p.add_argument("--samples", default=None, help="per-item details as JSONL")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default=None, help="default: bfloat16 on GPU, float32 on CPU")
    p.set_defaults(func=_run_eval)
    eval_sub = p.add_subparsers(dest="eval_command", metavar="compare")
    c = eval_sub.add_parser("compare", help="per-task metric deltas (B - A) of two results files",
                            description="Print every task's metrics in A and B and the delta B - A.")
    c.add_argument("a", help="results JSON (the baseline)")
    c.add_argument("b", help="results JSON (compared against A)")
    c.set_defaults(func=_run_eval_compare)


def _run_eval(args):
    from smollm3.eval import format_table, parse_tasks, run_eval
    from smollm3.eval.tasks import EvalError

    missing = [f"--{k}" for k in ("model", "tasks", "out") if not getattr(args, k)]
    if missing:
        raise EvalError(f"{', '.join(missing)} required (or `smollm3 eval compare A.json B.json`)")
    tasks = parse_tasks(args.tasks)
    dev = device(args.device)
    results = run_eval(args.model, tasks, mode=args.mode, limit=args.limit, max_tokens=args.max_tokens,
                       chat_template=args.chat_template, max_model_len=args.max_model_len, device=dev,
                       dtype=dtype_for(dev, args.dtype), samples_path=args.samples, yarn=args.yarn)
    Path(args.out).write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    print(format_table(results))
    print(f"wrote {args.out} ({results['timings']['total_s']:.1f} s)")


def _run_eval_compare(args):
    from smollm3.eval.compare import compare, format_compare, load_results

    a, b = load_results(args.a), load_results(args.b)
    print(format_compare(compare(a, b), Path(args.a).name, Path(args.b).name))
