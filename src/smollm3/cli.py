"""The `smollm3` console script: thin subcommands over the package's plain functions."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _device(name: str | None) -> str:
    import torch

    if name and name != "auto":
        return name
    return "cuda" if torch.cuda.is_available() else "cpu"


def _dtype_for(device: str, name: str | None):
    from smollm3.checkpoint import _dtype

    return _dtype(name) if name else _dtype("bfloat16" if device.startswith("cuda") else "float32")


# ------------------------------------------------------------------------------------------------------------------
# convert


def _add_convert(sub):
    p = sub.add_parser("convert", help="GGUF file or HF directory in, HF SmolLM3 directory out",
                       description="Convert a llama.cpp GGUF file (llama or smollm3 architecture; dequantised) or an "
                                   "HF directory into an HF SmolLM3 directory with its tokenizer and chat template.")
    p.add_argument("src", help="a .gguf file or an HF model directory")
    p.add_argument("--out", required=True, help="output directory (replaced atomically if it exists)")
    p.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: the source's; fp32 for GGUF)")
    p.set_defaults(func=_run_convert)


def _run_convert(args):
    from smollm3.checkpoint import load_gguf, load_pretrained, save_pretrained
    from smollm3.tokenizer import load_tokenizer, tokenizer_from_gguf

    src = Path(args.src)
    tokenizer, generation = None, None
    if src.is_file() and src.suffix == ".gguf":
        model, reader = load_gguf(src, dtype=args.dtype)
        tokenizer = tokenizer_from_gguf(reader)
        # GGUF metadata ids can disagree with the tokenizer's named specials; the tokenizer is the truth
        model.config.bos_token_id = tokenizer.bos_token_id
        model.config.eos_token_id = tokenizer.eos_token_id
        model.config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    else:
        model = load_pretrained(src, dtype=args.dtype)
        if (src / "tokenizer.json").exists():
            tokenizer = load_tokenizer(src)
        if (src / "generation_config.json").exists():
            generation = json.loads((src / "generation_config.json").read_text())
    out = save_pretrained(model, args.out, tokenizer=tokenizer, generation_config=generation)
    n = model.num_params()
    print(f"wrote {out} ({n / 1e6:.1f}M parameters, {model.config.num_hidden_layers} layers, "
          f"NoPE layers {model.config.nope_layer_indices or 'none'})")


# ------------------------------------------------------------------------------------------------------------------
# merge


def _add_merge(sub):
    p = sub.add_parser("merge", help="linear merge / model soup of HF checkpoints from a mergekit YAML",
                       description="Merge HF checkpoints of one architecture with mergekit's `linear` YAML "
                                   "(models[].model, models[].parameters.weight, normalize, dtype, "
                                   "tokenizer_source). Omitted weights give a model soup (equal weights). "
                                   "See docs/merge.md.")
    p.add_argument("config", help="mergekit-style YAML (relative model paths resolve against its directory)")
    p.add_argument("--out", required=True, help="output directory (replaced atomically if it exists)")
    p.add_argument("--max-shard-size", default=None,
                   help="largest safetensors shard, e.g. 2GB, 500MB (default: save_pretrained's, 5 GiB)")
    p.set_defaults(func=_run_merge)


def _run_merge(args):
    from smollm3.checkpoint import DEFAULT_SHARD_BYTES
    from smollm3.merge import linear_merge, parse_size, read_merge_config

    plan = read_merge_config(args.config)
    shard_bytes = parse_size(args.max_shard_size) if args.max_shard_size else DEFAULT_SHARD_BYTES
    out = linear_merge(plan.models, args.out, plan.weights, plan.normalize, plan.dtype, plan.tokenizer_source,
                       shard_bytes, record=plan)
    total = sum(plan.weights)
    shares = ", ".join(f"{m.name} {w / total if plan.normalize else w:.4g}" for m, w in zip(plan.models, plan.weights))
    print(f"wrote {out} (linear merge of {len(plan.models)} models: {shares})")


# ------------------------------------------------------------------------------------------------------------------
# generate


def _add_generate(sub):
    p = sub.add_parser("generate", help="generate text from a prompt (simple KV-cache loop)",
                       description="Generate a continuation of --prompt, streamed to stdout. With --chat the prompt "
                                   "is rendered as a user turn through the model's chat template.")
    p.add_argument("--model", required=True, help="HF model directory (or a .gguf file)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--chat", action="store_true", help="render the prompt as a user message with the chat template")
    p.add_argument("--system", default=None, help="system message (with --chat)")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=None,
                   help="0 = greedy (default: generation_config.json, else 0.6)")
    p.add_argument("--top-p", type=float, default=None, help="default: generation_config.json, else 0.95")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default=None, help="default: bfloat16 on GPU, float32 on CPU")
    p.set_defaults(func=_run_generate)


def _run_generate(args):
    from smollm3.chat import render_template
    from smollm3.checkpoint import load_pretrained
    from smollm3.generate import generate
    from smollm3.tokenizer import load_tokenizer

    if args.max_new_tokens < 1:
        raise SystemExit("--max-new-tokens must be at least 1")
    device = _device(args.device)
    model_path = Path(args.model)
    tokenizer = load_tokenizer(model_path)
    gen_cfg = {}
    if model_path.is_dir() and (model_path / "generation_config.json").exists():
        gen_cfg = json.loads((model_path / "generation_config.json").read_text())
    temperature = args.temperature if args.temperature is not None else gen_cfg.get("temperature", 0.6)
    top_p = args.top_p if args.top_p is not None else gen_cfg.get("top_p", 0.95)
    model = load_pretrained(model_path, device=device, dtype=_dtype_for(device, args.dtype))
    if args.chat:
        if not tokenizer.chat_template:
            raise SystemExit(f"{model_path} has no chat template (chat_template.jinja); drop --chat")
        messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
            {"role": "user", "content": args.prompt}]
        text = render_template(tokenizer.chat_template, messages, add_generation_prompt=True)
        prompt_ids = tokenizer.encode(text)
    else:
        prompt_ids = tokenizer.encode(args.prompt, add_special_tokens=True)
    stop = {i for i in _as_list(gen_cfg.get("eos_token_id", model.config.eos_token_id)) if i is not None}
    if tokenizer.eos_token_id is not None:
        stop.add(tokenizer.eos_token_id)
    printed, new = "", []

    def stream(token):
        nonlocal printed
        new.append(token)
        text = tokenizer.decode([t for t in new if t not in stop], skip_special_tokens=False)
        if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
            sys.stdout.write(text[len(printed):])
            sys.stdout.flush()
            printed = text

    generate(model, prompt_ids, args.max_new_tokens, temperature, top_p, args.top_k, args.seed, stop, stream)
    sys.stdout.write("\n")


def _as_list(x):
    return x if isinstance(x, list) else [x]


# ------------------------------------------------------------------------------------------------------------------
# tokenizer


def _add_tokenizer(sub):
    p = sub.add_parser("tokenizer", help="train a byte-level BPE tokenizer",
                       description="Tokenizer tools. `train` writes an HF tokenizer directory (tokenizer.json, "
                                   "tokenizer_config.json, special_tokens_map.json, chat_template.jinja).")
    tsub = p.add_subparsers(dest="tokenizer_command", metavar="SUBCOMMAND", required=True)
    t = tsub.add_parser("train", help="train byte-level BPE on text / JSON-lines files",
                        description="Byte-level BPE (HF tokenizers), digits split one by one, SmolLM3's special "
                                    "tokens as single ids after the BPE vocabulary, our SmolLM3 chat template.")
    t.add_argument("--corpus", nargs="+", required=True, metavar="PATH",
                   help="text files, JSON-lines files with a \"text\" field (.jsonl/.json/.ndjson, .gz ok), or "
                        "directories of them")
    t.add_argument("--vocab-size", type=int, required=True, help="total ids, special-token slots included")
    t.add_argument("--out", required=True, help="output directory")
    t.add_argument("--special-slots", type=int, default=256,
                   help="ids reserved for special tokens at the end of the vocabulary (default 256, as SmolLM3)")
    t.add_argument("--min-frequency", type=int, default=2, help="merge only pairs seen at least this often")
    t.set_defaults(func=_run_tokenizer_train)


def _run_tokenizer_train(args):
    from smollm3.tokenizer import train_tokenizer

    tok = train_tokenizer(args.corpus, args.vocab_size, args.out, special_slots=args.special_slots,
                          min_frequency=args.min_frequency)
    print(f"wrote {args.out} ({tok.vocab_size} ids: {tok.vocab_size - args.special_slots} BPE + "
          f"{args.special_slots} special; <|im_start|>={tok.token_to_id('<|im_start|>')}, "
          f"<|im_end|>={tok.token_to_id('<|im_end|>')})")


# ------------------------------------------------------------------------------------------------------------------
# corpus and data (docs/data.md)


def _add_corpus(sub):
    from smollm3.data.corpus import SOURCES

    p = sub.add_parser("corpus", help="build an offline multilingual text + code corpus from Debian docs",
                       description="Corpus tools. `build` fetches Debian documentation packages (apt-get download, "
                                   "cached; never installed), converts them to text, keeps the paragraphs in each "
                                   "language, and adds Python's standard library as code: OUT/<lang>/<source>.jsonl, "
                                   "source package and licence in every record.")
    csub = p.add_subparsers(dest="corpus_command", metavar="SUBCOMMAND", required=True)
    b = csub.add_parser("build", help="fetch, convert and language-filter the corpus (a rerun is instant)")
    b.add_argument("--out", required=True, help="output directory")
    b.add_argument("--langs", default="en,fr,es,de,it,pt", help="comma-separated languages (default: all six)")
    b.add_argument("--sources", default=None, help=f"comma-separated sources (default: all): {','.join(SOURCES)}")
    b.add_argument("--no-code", action="store_true", help="leave out the Python standard library")
    b.add_argument("--cache", default=None, help="download cache (default: ~/.cache/smollm3/corpus, or $SMOLLM3_CACHE)")
    b.add_argument("--debs", default=None, metavar="DIR",
                   help="use .deb files from DIR instead of apt-get (for machines without apt)")
    b.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    b.set_defaults(func=_run_corpus_build)


def _run_corpus_build(args):
    from smollm3.data.corpus import build_corpus, summary

    langs = tuple(x.strip() for x in args.langs.split(",") if x.strip())
    sources = tuple(x.strip() for x in args.sources.split(",") if x.strip()) if args.sources else None
    manifest = build_corpus(args.out, langs, code=not args.no_code, sources=sources, cache=args.cache,
                            debs=args.debs, workers=args.workers)
    print(summary(manifest))
    print(f"wrote {args.out} (MB of text per language; licences in every record and in {args.out}/LICENSES)")


def _add_data(sub):
    from smollm3.data.synthetic_long import KINDS

    p = sub.add_parser("data", help="tokenize documents into shards; generate synthetic tasks",
                       description="Data tools. `prepare` writes datatrove-layout token shards (.ds, .ds.index, "
                                   ".ds.metadata) that the pretraining mixture reads; `synth` writes seeded "
                                   "synthetic tasks (math, tools, chats, preference pairs, long-context retrieval) "
                                   "as JSONL in TRL's conversational format.")
    dsub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    d = dsub.add_parser("prepare", help="jsonl / jsonl.gz / parquet / txt -> token shards (parallel, resumable)")
    d.add_argument("--input", nargs="+", required=True, metavar="PATH", help="files or directories of them")
    d.add_argument("--tokenizer", required=True, help="HF tokenizer directory (or .gguf)")
    d.add_argument("--out", required=True, help="shard directory (rerunning resumes: finished shards are skipped)")
    d.add_argument("--text-key", default="text", help="the text field of JSONL records / parquet column")
    d.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    d.add_argument("--chunk-mb", type=float, default=64.0, help="input MB per shard (default 64)")
    d.add_argument("--eos-token", default=None, help="token appended to every document (default: the tokenizer's eos)")
    d.set_defaults(func=_run_data_prepare)
    s = dsub.add_parser("synth", help="write N seeded synthetic examples of a task as JSONL")
    s.add_argument("task", help="arithmetic | small_arithmetic | word_problem | running_total | memory_chat | "
                                "preference | tool_xml | tool_python | " + " | ".join(KINDS))
    s.add_argument("--n", type=int, required=True, help="number of examples")
    s.add_argument("--out", required=True, help="output .jsonl")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--think", action="store_true", help="reasoning traces (think mode) where the task has them")
    s.add_argument("--length", type=int, default=4096, help="long-context tasks: tokens per example")
    s.add_argument("--tokenizer", default=None, help="long-context tasks: count tokens exactly with this tokenizer")
    s.set_defaults(func=_run_data_synth)


def _run_data_prepare(args):
    from smollm3.data.prepare import prepare

    s = prepare(args.input, args.tokenizer, args.out, text_key=args.text_key, workers=args.workers,
                chunk_mb=args.chunk_mb, eos_token=args.eos_token)
    mb = s["processed_bytes"] / 1e6
    rate = f", {mb / s['seconds']:.2f} MB/s" if s["processed_bytes"] and s["seconds"] else ""
    print(f"wrote {args.out}: {s['shards']} shards ({s['skipped_shards']} already done), {s['documents']:,} documents, "
          f"{s['tokens']:,} tokens{rate}")


def _run_data_synth(args):
    import os

    from smollm3.data.synthetic import generate

    long = args.task.startswith(("niah", "variable"))
    options = {}
    if long:
        from smollm3.tokenizer import load_tokenizer

        options = {"length": args.length, "tokenizer": load_tokenizer(args.tokenizer) if args.tokenizer else None}
    if args.think or not long:
        options["think"] = args.think
    examples = generate(args.task, args.n, seed=args.seed, **options)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(ex, ensure_ascii=False) + "\n" for ex in examples)
    os.replace(tmp, out)
    print(f"wrote {out} ({len(examples)} {args.task} examples, seed {args.seed})")


# ------------------------------------------------------------------------------------------------------------------


def _add_train(sub):
    p = sub.add_parser("train", help="train any stage of the recipe from a YAML config (also under torchrun)",
                       description="Run one training stage: pretraining, long context, mid-training, SFT, DPO/APO. "
                                   "Overrides take dotted keys, e.g. train.steps=100 optim.lr=3e-4. Under "
                                   "`torchrun --nproc_per_node N` the model is sharded with FSDP2.")
    p.add_argument("config", help="YAML config (see src/smollm3/recipes/)")
    p.add_argument("overrides", nargs="*", help="section.key=value")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.set_defaults(func=_run_train)


def _run_train(args):
    from smollm3.train.config import dump_config, load_train_config

    cfg = load_train_config(args.config, args.overrides)
    if args.print_config:
        print(dump_config(cfg), end="")
        return
    from smollm3.train.trainer import train

    train(cfg)


# ------------------------------------------------------------------------------------------------------------------
# chat and serve (the engine in smollm3.infer)


def _add_engine_args(p):
    p.add_argument("--model", required=True, help="HF model directory (or a .gguf file)")
    p.add_argument("--max-model-len", type=int, default=None,
                   help="context length; above the model's own it enables YaRN rope scaling in memory "
                        "(e.g. 131072 on SmolLM3-3B = x2), never written to the checkpoint")
    p.add_argument("--max-num-seqs", type=int, default=32, help="concurrent sequences (KV cache slots)")
    p.add_argument("--kv-cache-gib", type=float, default=None,
                   help="KV cache memory (default: 80%% of free GPU memory, 4 GiB on CPU)")
    p.add_argument("--chat-template", default=None,
                   help="template name (smollm3, official) or a .jinja file (default: the model's own)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default=None, help="default: bfloat16 on GPU, float32 on CPU")


def _engine_kwargs(args) -> dict:
    device = _device(args.device)
    if args.max_model_len is not None and args.max_model_len < 2:
        raise ValueError("--max-model-len must be at least 2")
    return {"max_model_len": args.max_model_len, "max_num_seqs": args.max_num_seqs, "device": device,
            "dtype": _dtype_for(device, args.dtype),
            "kv_cache_memory": int(args.kv_cache_gib * 2**30) if args.kv_cache_gib else None}


def _add_chat(sub):
    p = sub.add_parser("chat", help="interactive chat with streaming, /think and /no_think, tools",
                       description="A streaming chat REPL. In the REPL, /help lists the commands (/think, /no_think, "
                                   "/reasoning show|hide, /system, /tool, /clear, /exit).")
    _add_engine_args(p)
    p.add_argument("--system", default=None, help="system prompt")
    p.add_argument("--tools", default=None, help="JSON file with a list of OpenAI-style tool specs")
    p.add_argument("--no-think", action="store_true", help="start in /no_think mode")
    p.add_argument("--hide-reasoning", action="store_true", help="do not print the <think> reasoning")
    p.add_argument("--max-tokens", type=int, default=4096, help="longest reply")
    p.add_argument("--temperature", type=float, default=None, help="default: generation_config.json, else 0.6")
    p.add_argument("--top-p", type=float, default=None, help="default: generation_config.json, else 0.95")
    p.add_argument("--seed", type=int, default=None)
    p.set_defaults(func=_run_chat)


def _run_chat(args):
    from smollm3.infer.chat_repl import ChatSession, load_tools, repl
    from smollm3.infer.llm import build_engine
    from smollm3.infer.sampling import SamplingParams

    tools = load_tools(args.tools) if args.tools else None
    engine, template = build_engine(args.model, chat_template=args.chat_template, **_engine_kwargs(args))
    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                            seed=args.seed)
    params.validate()
    session = ChatSession(engine, template, params, system=args.system, tools=tools,
                          enable_thinking=not args.no_think, show_reasoning=not args.hide_reasoning,
                          color=sys.stdout.isatty())
    repl(session)


def _add_serve(sub):
    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server (/v1/chat/completions, /v1/completions, ...)",
                       description="Serve the model over an OpenAI-compatible API (FastAPI + uvicorn). Listens on "
                                   "127.0.0.1 unless --host says otherwise. Needs: pip install 'smollm3[serve]'.")
    _add_engine_args(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1/* "
                                                   "(default: $SMOLLM3_API_KEY if set)")
    p.add_argument("--served-model-name", default=None, help="the model id clients use (default: the directory name)")
    p.set_defaults(func=_run_serve)


def _run_serve(args):
    import os

    from smollm3.infer.server import serve

    serve(args.model, host=args.host, port=args.port, api_key=args.api_key or os.environ.get("SMOLLM3_API_KEY"),
          served_model_name=args.served_model_name, chat_template=args.chat_template, **_engine_kwargs(args))


# ------------------------------------------------------------------------------------------------------------------
# eval


def _add_eval(sub):
    from smollm3.data.synthetic_long import KINDS
    from smollm3.eval.tasks import available

    p = sub.add_parser("eval", help="evaluate a model: multiple-choice cloze, generative exact match, bits-per-byte, "
                                    "HumanEval, tool calls, RULER long context; `eval compare` diffs two results files",
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
    device = _device(args.device)
    results = run_eval(args.model, tasks, mode=args.mode, limit=args.limit, max_tokens=args.max_tokens,
                       chat_template=args.chat_template, max_model_len=args.max_model_len, device=device,
                       dtype=_dtype_for(device, args.dtype), samples_path=args.samples, yarn=args.yarn)
    Path(args.out).write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    print(format_table(results))
    print(f"wrote {args.out} ({results['timings']['total_s']:.1f} s)")


def _run_eval_compare(args):
    from smollm3.eval.compare import compare, format_compare, load_results

    a, b = load_results(args.a), load_results(args.b)
    print(format_compare(compare(a, b), Path(args.a).name, Path(args.b).name))


# ------------------------------------------------------------------------------------------------------------------
# recipe


def _add_recipe(sub):
    p = sub.add_parser("recipe", help="run a whole training recipe: every stage, evaluation, a report",
                       description="Recipes chain the stages of the SmolLM3 recipe (data, pretraining, long context, "
                                   "mid-training, SFT, APO, merge), evaluate every stage's checkpoint and write "
                                   "OUT/report.md with plots. Interrupted runs resume: rerun the same command.")
    rsub = p.add_subparsers(dest="recipe_command", metavar="SUBCOMMAND", required=True)
    r = rsub.add_parser("run", help="run a recipe (resumable)")
    r.add_argument("recipe", help="a recipe name (`smollm3 recipe list`) or a recipe YAML file")
    r.add_argument("--out", required=True, help="run directory (rerun to resume)")
    r.add_argument("--no-eval", action="store_true", help="train only: skip evaluation and the report")
    r.set_defaults(func=_run_recipe)
    ls = rsub.add_parser("list", help="the recipes that ship with smollm3")
    ls.set_defaults(func=_run_recipe_list)


def _run_recipe_list(args):
    from smollm3.recipe.run import available

    print("\n".join(available()))


def _run_recipe(args):
    import time

    from smollm3.recipe.run import run_recipe

    t0 = time.perf_counter()
    report = run_recipe(args.recipe, args.out, evaluate=not args.no_eval,
                        log=lambda msg: print(f"[recipe] {msg}", flush=True))
    for c in report.get("claims", []):
        print(f"[{'ok' if c['holds'] else 'NO'}] {c['claim']}: {c['numbers']}")
    print(f"recipe {report['recipe']} finished in {(time.perf_counter() - t0) / 60:.1f} min; run directory {args.out}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="smollm3", description="The SmolLM3 system: model, data, training, "
                                     "merging, evaluation and inference.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (_add_convert, _add_generate, _add_merge, _add_tokenizer, _add_corpus, _add_data, _add_train,
                _add_chat, _add_serve, _add_eval, _add_recipe):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from smollm3.checkpoint import CheckpointError
    from smollm3.config import ConfigError

    try:
        args.func(args)
    except (ConfigError, CheckpointError, FileNotFoundError, ValueError) as e:
        print(f"smollm3 {args.command}: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
