"""`smollm3 chat` and `smollm3 serve`: the batched engine in smollm3.infer (docs/inference.md)."""

from __future__ import annotations

import sys

from smollm3.cli import device, dtype_for, number


def add(sub, name, help):
    {"chat": _add_chat, "serve": _add_serve}[name](sub, help)


def _add_engine_args(p):
    p.add_argument("--model", required=True, help="HF model directory (or a .gguf file)")
    p.add_argument("--max-model-len", type=int, default=None,
                   help="context length; above the model's own it enables YaRN rope scaling in memory "
                        "(e.g. 131072 on SmolLM3-3B = x2), never written to the checkpoint")
    p.add_argument("--max-num-seqs", type=number(int, 1), default=256,
                   help="requests running at once, at most (default 256; admission is by free KV blocks)")
    p.add_argument("--gpu-memory-utilization", type=number(float, 0, 1, low_open=True), default=0.9,
                   help="fraction of the GPU's memory this server may use, KV cache included (default 0.9)")
    p.add_argument("--kv-cache-gib", type=number(float, 0, low_open=True), default=None,
                   help="KV cache memory outright (default: what --gpu-memory-utilization leaves; 4 GiB on CPU)")
    p.add_argument("--max-num-batched-tokens", type=number(int, 1), default=2048,
                   help="tokens computed per engine step: decodes plus prompt chunks (chunked prefill; default 2048)")
    p.add_argument("--max-prefill-tokens-during-decode", type=number(int, 1), default=None,
                   help="cap on the prompt work of a step in which streams decode, in tokens of a fresh prompt (a "
                        "token deep in a long prompt also attends to the keys before it and counts more): lower keeps "
                        "streams' gaps between tokens short while a long prompt is read, at the cost of its time to "
                        "first token (default: none, the whole --max-num-batched-tokens)")
    p.add_argument("--max-prefill-layers-during-decode", type=number(int, 1), default=None,
                   help="GPU: a prompt step begun while streams decode runs this many decoder layers per engine step, "
                        "the rest after the streams' next tokens: deep in a long prompt a step costs about the same "
                        "at any token count, so this, not the token cap, shortens the streams' gap there (the same "
                        "tokens; default: every layer in one step). With --max-prefill-tokens-during-decode 512, 12 "
                        "is the latency setting for long prompts (docs/inference.md); new requests are admitted "
                        "more slowly with it")
    p.add_argument("--invariant-prefill", action="store_true",
                   help="GPU: compute every prompt token the same bits whatever else its engine step holds, so greedy "
                        "replies are the same with and without the prefix cache however prompts are chunked (fixed-"
                        "tiling GEMMs instead of cuBLAS's per-shape choice: slower prompt reading)")
    p.add_argument("--block-size", type=number(int, 1), default=64, help="tokens per KV cache block (a power of 2)")
    p.add_argument("--no-prefix-caching", action="store_true",
                   help="do not reuse the KV blocks of earlier prompts' shared heads")
    p.add_argument("--chat-template", default=None,
                   help="template name (smollm3, official) or a .jinja file (default: the model's own)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default=None, help="default: bfloat16 on GPU, float32 on CPU")


def _engine_kwargs(args) -> dict:
    dev = device(args.device)
    if args.max_model_len is not None and args.max_model_len < 2:
        raise ValueError("--max-model-len must be at least 2")
    if args.block_size & (args.block_size - 1):
        raise ValueError(f"--block-size must be a power of 2, got {args.block_size}")
    return {"max_model_len": args.max_model_len, "max_num_seqs": args.max_num_seqs, "device": dev,
            "dtype": dtype_for(dev, args.dtype), "gpu_memory_utilization": args.gpu_memory_utilization,
            "kv_cache_memory": int(args.kv_cache_gib * 2**30) if args.kv_cache_gib else None,
            "max_num_batched_tokens": args.max_num_batched_tokens, "block_size": args.block_size,
            "max_prefill_tokens_during_decode": args.max_prefill_tokens_during_decode,
            "max_prefill_layers_during_decode": args.max_prefill_layers_during_decode,
            "prefix_caching": not args.no_prefix_caching, "invariant_prefill": args.invariant_prefill}


def _add_chat(sub, help):
    p = sub.add_parser("chat", help=help,
                       description="A streaming chat REPL. In the REPL, /help lists the commands (/think, /no_think, "
                                   "/reasoning show|hide, /system, /tool, /clear, /exit).")
    _add_engine_args(p)
    p.add_argument("--system", default=None, help="system prompt")
    p.add_argument("--tools", default=None, help="JSON file with a list of OpenAI-style tool specs")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--think", dest="no_think", action="store_false", default=False,
                      help="start in /think mode, enable_thinking=True (the default)")
    mode.add_argument("--no-think", dest="no_think", action="store_true",
                      help="start in /no_think mode, enable_thinking=False")
    p.add_argument("--hide-reasoning", action="store_true", help="do not print the <think> reasoning")
    p.add_argument("--max-tokens", type=number(int, 1), default=4096, help="longest reply")
    p.add_argument("--temperature", type=number(float, 0, 100, what=" (0 = greedy)"), default=None,
                   help="0 = greedy (default: generation_config.json, else 0.6)")
    p.add_argument("--top-p", type=number(float, 0, 1, low_open=True), default=None,
                   help="in (0, 1] (default: generation_config.json, else 0.95)")
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


def _add_serve(sub, help):
    p = sub.add_parser("serve", help=help,
                       description="Serve the model over an OpenAI-compatible API (FastAPI + uvicorn). Listens on "
                                   "127.0.0.1 unless --host says otherwise. Needs: pip install 'smollm3[serve]'.")
    _add_engine_args(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1/* "
                                                   "(default: $SMOLLM3_API_KEY if set)")
    p.add_argument("--served-model-name", default=None, help="the model id clients use (default: the directory name)")
    p.add_argument("--max-body-bytes", type=number(int, 1), default=None,
                   help="larger request bodies get a 413 (default 8 MiB)")
    p.add_argument("--max-waiting", type=number(int, 1), default=None,
                   help="requests queued for admission before new ones get a 429 (default 4 x --max-num-seqs)")
    p.set_defaults(func=_run_serve)


def _run_serve(args):
    import os

    from smollm3.infer.server import serve

    limits = {"max_waiting": args.max_waiting}
    if args.max_body_bytes is not None:
        limits["max_body_bytes"] = args.max_body_bytes
    serve(args.model, host=args.host, port=args.port, api_key=args.api_key or os.environ.get("SMOLLM3_API_KEY"),
          served_model_name=args.served_model_name, chat_template=args.chat_template, **limits,
          **_engine_kwargs(args))
