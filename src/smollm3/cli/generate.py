"""`smollm3 generate`: one prompt in, the continuation streamed out (the reference KV-cache loop)."""

from __future__ import annotations

import json
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
    p.add_argument("--top-k", type=number(int, 0, what=" (0 = off)"), default=0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default=None, help="default: bfloat16 on GPU, float32 on CPU")
    p.set_defaults(func=_run_generate)


def _run_generate(args):
    from smollm3.chat import chat_template, render_template
    from smollm3.checkpoint import load_pretrained
    from smollm3.generate import generate
    from smollm3.tokenizer import load_tokenizer

    if not args.chat and (args.think is not None or args.chat_template or args.system):
        raise ValueError("--think, --no-think, --chat-template and --system apply to a chat turn; add --chat")
    dev = device(args.device)
    model_path = Path(args.model)
    tokenizer = load_tokenizer(model_path)
    gen_cfg = {}
    if model_path.is_dir() and (model_path / "generation_config.json").exists():
        gen_cfg = json.loads((model_path / "generation_config.json").read_text())
    temperature = args.temperature if args.temperature is not None else gen_cfg.get("temperature", 0.6)
    top_p = args.top_p if args.top_p is not None else gen_cfg.get("top_p", 0.95)
    model = load_pretrained(model_path, device=dev, dtype=dtype_for(dev, args.dtype))
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
