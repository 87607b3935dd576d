"""`smollm3 convert` and `smollm3 merge`: checkpoints in, HF directories out."""

from __future__ import annotations

from pathlib import Path


def add(sub, name, help):
    {"convert": _add_convert, "merge": _add_merge}[name](sub, help)


def _add_convert(sub, help):
    p = sub.add_parser("convert", help=help,
                       description="Convert a llama.cpp GGUF file (llama or smollm3 architecture; dequantised) or an "
                                   "HF directory into an HF SmolLM3 directory with its tokenizer and chat template.")
    p.add_argument("src", help="a .gguf file or an HF model directory")
    p.add_argument("--out", required=True, help="output directory (replaced atomically if it exists)")
    p.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: the source's; fp32 for GGUF)")
    p.set_defaults(func=_run_convert)


def _run_convert(args):
    from smollm3.checkpoint import load_generation_config, load_gguf, load_pretrained, save_pretrained
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
        generation = load_generation_config(src)  # {}: save_pretrained writes the config's ids
    out = save_pretrained(model, args.out, tokenizer=tokenizer, generation_config=generation)
    n = model.num_params()
    print(f"wrote {out} ({n / 1e6:.1f}M parameters, {model.config.num_hidden_layers} layers, "
          f"NoPE layers {model.config.nope_layer_indices or 'none'})")


def _add_merge(sub, help):
    p = sub.add_parser("merge", help=help,
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
    from smollm3.config import byte_size
    from smollm3.merge import linear_merge, read_merge_config

    shard_bytes = DEFAULT_SHARD_BYTES
    if args.max_shard_size:
        shard_bytes = byte_size(args.max_shard_size, "--max-shard-size", positive=True)
    plan = read_merge_config(args.config)
    out = linear_merge(plan.models, args.out, plan.weights, plan.normalize, plan.dtype, plan.tokenizer_source,
                       shard_bytes, record=plan)
    total = sum(plan.weights)
    shares = ", ".join(f"{m.name} {w / total if plan.normalize else w:.4g}" for m, w in zip(plan.models, plan.weights))
    print(f"wrote {out} (linear merge of {len(plan.models)} models: {shares})")
