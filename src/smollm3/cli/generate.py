"""`smollm3 generate`: one prompt in, the continuation streamed out (the reference KV-cache loop)."""

from __future__ import annotations

import sys
from pathlib import Path

from smollm3.cli import device, dtype_for, number


def add(sub, name, help):
    p = sub.add_parser("generate", help=help,
                       description="Generate a continuation of --prompt, streamed to stdout. With --chat the prompt "
                                   "is rendered as a user turn through the model's chat template; --think / "
                                   "--no-think set its reasoning mode (enable_thinking).")
    p.add_argument("--model", required=True, help="HF model directory (or a .gguf file)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--chat", action="store_true", help="render the prompt as a user message with the chat template")
    p.add_argument("--system", default=None, help="system message (with --chat)")
    p.add_argument("--chat-template", default=None,
                   help="with --chat: template name (smollm3, official, chatml) or a .jinja file (default: the "
                        "model's own)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--think", dest="think", action="store_true", default=None,
                      help="with --chat: reasoning mode, enable_thinking=True (the SmolLM3 template's default)")
    mode.add_argument("--no-think", dest="think", action="store_false",
                      help="with --chat: answer directly, enable_thinking=False (the template opens the reply "
                           "with an empty think block)")
    p.add_argument("--max-new-tokens", type=number(int, 1), default=256)
    p.add_argument("--temperature", type=number(float, 0, 100, what=" (0 = greedy)"), default=None,
                   help="0 = greedy (default: generation_config.json, else 0.6)")
    p.add_argument("--top-p", type=number(float, 0, 1, low_open=True), default=None,
                   help="in (0, 1] (default: generation_config.json, else 0.95)")
    p.add_argument("--top-k", type=number(int, 0, what=" (0 = off)"), default=None,
                   help="0 = off (default: generation_config.json, else off)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default=None, help="default: bfloat16 on GPU, float32 on CPU")
    p.set_defaults(func=_run_generate)


def _run_generate(args):
    from smollm3.chat import chat_template, render_template
    from smollm3.generate import generate
    from smollm3.infer.llm import load_for_inference
    from smollm3.infer.sampling import SamplingParams, generation_defaults, stop_token_ids

    if not args.chat and (args.think is not None or args.chat_template or args.system):
        raise ValueError("--think, --no-think, --chat-template and --system apply to a chat turn; add --chat")
    dev = device(args.device)
    model_path = Path(args.model)
    # the model, its tokenizer and generation_config.json as the engine (chat, serve, eval) loads them
    model, tokenizer, gen_cfg = load_for_inference(model_path, dev, dtype_for(dev, args.dtype))
    if tokenizer is None:
        raise ValueError(f"{model_path}: no tokenizer.json; generate needs the model's tokenizer beside its weights")
    # unset flags take the model's defaults (generation_config.json, else SmolLM3's recommended), as the engine's do
    sampling = SamplingParams(max_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                              top_k=args.top_k, seed=args.seed).resolve(generation_defaults(gen_cfg))
    if args.chat:
        if args.chat_template is not None:
            template = Path(args.chat_template).read_text() if Path(args.chat_template).is_file() \
                else chat_template(args.chat_template)
        elif tokenizer.chat_template:
            template = tokenizer.chat_template
        else:
            raise ValueError(f"{model_path} has no chat template (chat_template.jinja); drop --chat or pass "
                             "--chat-template smollm3")
        messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
            {"role": "user", "content": args.prompt}]
        mode = {} if args.think is None else {"enable_thinking": args.think}
        text = render_template(template, messages, add_generation_prompt=True, **mode)
        prompt_ids = tokenizer.encode(text)
    else:
        prompt_ids = tokenizer.encode(args.prompt, add_special_tokens=True)
    stop = set(stop_token_ids(model.config, tokenizer, gen_cfg))
    printed, new = "", []

    def stream(token):
        nonlocal printed
        new.append(token)
        text = tokenizer.decode([t for t in new if t not in stop], skip_special_tokens=False)
        if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
            sys.stdout.write(text[len(printed):])
            sys.stdout.flush()
            printed = text

    generate(model, prompt_ids, sampling.max_tokens, sampling.temperature, sampling.top_p, sampling.top_k, sampling.seed,
             stop, stream)
    sys.stdout.write("\n")
