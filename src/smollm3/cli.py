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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="smollm3", description="The SmolLM3 system: model, data, training, "
                                     "merging, evaluation and inference.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (_add_convert, _add_generate):
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
