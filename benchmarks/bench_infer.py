"""Inference speed of the smollm3 engine beside transformers `generate` and beside the bandwidth roofline, one run.

    python3 benchmarks/bench_infer.py --out benchmarks/results/DATE-infer-h100.json          # 3B, bf16, CUDA
    python3 benchmarks/bench_infer.py --preset tiny --device cpu --out /tmp/bench-infer.json  # smoke test

The model is a preset with random weights (bf16 on GPU), saved once with smollm3.save_pretrained and loaded by
transformers from that directory, so both run the same weights. Rows:
- copy bandwidth: a large device-to-device copy (bytes read + written over time), the memory roofline's speed;
- single-stream decode tok/s: ours (CUDA-graph decode of the fused compiled step, infer/fast.py), ours without
  the fused step (the previous eager-step CUDA graphs, same run) and transformers' generate (its defaults: dynamic
  cache, SDPA), all greedy, timed as (t(N new tokens) - t(1 new token)) / (N - 1) so prefill is excluded;
  the roofline is copy bandwidth / bytes read per token (every weight once + the KV cache);
- 32-stream throughput: 32 prompts decoded together, generated tokens per second end to end (prefill included);
- time to first token for a 32k-token prompt (one prefill plus the first sampled token).
Outputs are random-weight garbage by design; ignore_eos keeps every run at its full length.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time

import torch

from smollm3 import build_model, preset, save_pretrained
from smollm3.infer import Engine, SamplingParams
from smollm3.infer.cache import kv_bytes_per_token


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device):
    sync(device)
    t = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t, out


def copy_bandwidth(device, nbytes: int, iters: int = 10) -> float:
    """GB/s moved by a device-to-device copy (read + write), best of `iters`."""
    a = torch.empty(nbytes, dtype=torch.uint8, device=device)
    b = torch.empty_like(a)
    b.copy_(a)
    best = min(timed(lambda: b.copy_(a), device)[0] for _ in range(iters))
    return 2 * nbytes / best / 1e9


def make_engine(model, slots, max_len, cuda_graphs=None, fast_decode=None, gemv=None, async_decode=True,
                decode_kernels=None, max_num_batched_tokens=2048, block_size=64):
    blocks = slots * -(-max_len // block_size) + 1  # every stream at full length, and the runner's scratch block
    kv = kv_bytes_per_token(model.config, next(model.parameters()).dtype) * block_size * blocks
    engine = Engine(model, None, max_num_seqs=slots, max_model_len=max_len, kv_cache_memory=kv, block_size=block_size,
                    cuda_graphs=cuda_graphs, eos_token_ids=[], fast_decode=fast_decode, gemv=gemv,
                    decode_kernels=decode_kernels, max_num_batched_tokens=max_num_batched_tokens)
    engine.async_decode = engine.async_decode and async_decode
    return engine


def ours_generate(engine, prompts, n):
    return engine.generate(prompts, SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True))


def hf_generate(hf, prompts, n):
    ids = torch.tensor(prompts, device=hf.device)
    with torch.no_grad():
        return hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                           do_sample=False, eos_token_id=None, pad_token_id=0)


def decode_rate(run, device, n: int, repeats: int = 3) -> float:
    """Tokens/s of decode alone: (t(n) - t(1)) / (n - 1), best of `repeats` each."""
    t1 = min(timed(lambda: run(1), device)[0] for _ in range(repeats))
    tn = min(timed(lambda: run(n), device)[0] for _ in range(repeats))
    return (n - 1) / (tn - t1)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="smollm3-3b")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32 on CPU")
    ap.add_argument("--prompt", type=int, default=128, help="prompt tokens for the decode rows")
    ap.add_argument("--gen", type=int, default=256, help="new tokens per sequence for the decode rows")
    ap.add_argument("--streams", type=int, default=32)
    ap.add_argument("--ttft-prompt", type=int, default=32768)
    ap.add_argument("--skip-hf", action="store_true", help="only our engine (no transformers rows)")
    ap.add_argument("--block-size", type=int, default=64, help="KV-cache block size (tokens) of our engines")
    ap.add_argument("--only-ours", action="store_true",
                    help="only the default engine's rows (no compiled-step or eager-step variants, no TTFT)")
    ap.add_argument("--out", required=True, help="JSON results file")
    args = ap.parse_args()

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    torch.manual_seed(0)
    cfg = preset(args.preset)
    model = build_model(cfg, device=device, dtype=dtype).eval()
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())  # tied lm_head counted once
    ttft_len = min(args.ttft_prompt, cfg.max_position_embeddings - 1)
    vocab = cfg.vocab_size
    gen = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, vocab, (args.prompt,), generator=gen).tolist()
    batch = [torch.randint(0, vocab, (args.prompt,), generator=gen).tolist() for _ in range(args.streams)]
    long_prompt = torch.randint(0, vocab, (ttft_len,), generator=gen).tolist()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    res = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "device": name, "torch": torch.__version__,
           "preset": args.preset, "dtype": str(dtype).replace("torch.", ""), "params": model.num_params(),
           "weight_bytes": weight_bytes, "prompt_tokens": args.prompt, "new_tokens": args.gen,
           "streams": args.streams}
    print(f"{args.preset} on {name}: {model.num_params() / 1e9:.2f}B params, {weight_bytes / 1e9:.2f} GB "
          f"{res['dtype']} weights", flush=True)

    # ---- roofline
    bw = copy_bandwidth(device, (2 << 30) if device.type == "cuda" else (256 << 20))
    kv_read = kv_bytes_per_token(cfg, dtype) * (args.prompt + args.gen // 2)  # mean context over the decode
    res["copy_bandwidth_gbps"] = round(bw, 1)
    res["roofline_tok_s"] = round(bw * 1e9 / (weight_bytes + kv_read), 1)

    # ---- ours: the Triton decode kernels (decode_kernels.py) with pipelined decode; the compiled step with the
    # Triton GEMVs, pipelined (the previous record's engine); the plain eager step (all CUDA graphs on GPU)
    max_len = args.prompt + args.gen + 16
    ours_tokens = None
    variants = (("ours", None, None, True, None), ("ours_compiled_gemv", True, None, True, False),
                ("ours_eager_step", False, None, False, None))
    res["block_size"] = args.block_size
    for key, fast, gemv, pipelined, kernels in variants[:1] if args.only_ours else variants:
        engine = make_engine(model, args.streams, max_len, fast_decode=fast, gemv=gemv, async_decode=pipelined,
                             decode_kernels=kernels, block_size=args.block_size)
        warm, _ = timed(lambda e=engine: ours_generate(e, [prompt] * 2 + batch[:args.streams - 2], args.gen), device)
        warm1, first = timed(lambda e=engine: ours_generate(e, [prompt], args.gen), device)  # captures b=1 graphs
        res[f"{key}_warmup_s"] = round(warm + warm1, 2)
        res[f"{key}_cuda_graphs"] = engine.runner.use_graphs
        res[f"{key}_fused_step"] = engine.runner.fast is not None
        res[f"{key}_triton_gemv"] = engine.runner.fast is not None and engine.runner.fast.gemv
        res[f"{key}_decode_kernels"] = engine.runner.fast is not None and engine.runner.fast.kernels
        res[f"{key}_pipelined"] = engine.async_decode
        res[f"{key}_decode_tok_s"] = round(decode_rate(lambda n, e=engine: ours_generate(e, [prompt], n), device,
                                                       args.gen), 1)
        t, _ = timed(lambda e=engine: ours_generate(e, batch, args.gen), device)
        res[f"{key}_batch_tok_s"] = round(args.streams * args.gen / t, 1)
        if ours_tokens is None:
            ours_tokens = first[0].output_ids
        else:  # greedy agreement of the steps on these bf16 random weights (near-ties may flip late tokens)
            res[f"ours_vs_{key}_tokens_equal_first_32"] = sum(
                a == b for a, b in zip(ours_tokens[:32], first[0].output_ids[:32]))
        print(f"{key}: decode {res[f'{key}_decode_tok_s']} tok/s, {args.streams} streams "
              f"{res[f'{key}_batch_tok_s']} tok/s, warm-up {res[f'{key}_warmup_s']} s", flush=True)
        engine = None  # free its KV cache before the next one
    if not args.only_ours:  # time to first token of one long prompt
        long_engine = make_engine(model, 1, ttft_len + 1, max_num_batched_tokens=ttft_len + 1)  # one prefill, unchunked
        ours_generate(long_engine, [long_prompt[:1024]], 1)  # warm the prefill kernels
        res["ttft_prompt_tokens"] = ttft_len
        try:
            ttft = []
            for _ in range(2):
                r = ours_generate(long_engine, [long_prompt], 1)[0]
                ttft.append(r.first_token_time - r.arrival_time)
            res["ours_ttft_s"] = round(min(ttft), 3)
        except torch.OutOfMemoryError as e:
            res["ours_ttft_s"] = f"out of memory: {str(e)[:120]}"
        long_engine = None
        if device.type == "cuda":
            torch.cuda.empty_cache()

    # ---- transformers, same weights
    if not (args.skip_hf or args.only_ours):
        import transformers

        res["transformers"] = transformers.__version__
        tmp = tempfile.mkdtemp(prefix="bench-infer-")
        try:
            save_pretrained(model, tmp)
            hf = transformers.AutoModelForCausalLM.from_pretrained(tmp, dtype=dtype).to(device).eval()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        hf_generate(hf, [prompt], 8)  # warm-up
        hf_tokens = hf_generate(hf, [prompt], args.gen)[0, args.prompt:].tolist()
        res["greedy_tokens_equal_first_32"] = sum(a == b for a, b in zip(ours_tokens[:32], hf_tokens[:32]))
        res["hf_decode_tok_s"] = round(decode_rate(lambda n: hf_generate(hf, [prompt], n), device, args.gen), 1)
        t, _ = timed(lambda: hf_generate(hf, batch, args.gen), device)
        res["hf_batch_tok_s"] = round(args.streams * args.gen / t, 1)
        try:
            hf_generate(hf, [long_prompt[:1024]], 1)
            res["hf_ttft_s"] = round(min(timed(lambda: hf_generate(hf, [long_prompt], 1), device)[0]
                                         for _ in range(2)), 3)
        except torch.OutOfMemoryError as e:
            res["hf_ttft_s"] = f"out of memory: {str(e)[:120]}"
        hf = None

    # ---- report
    rows = [("copy bandwidth (GB/s)", res["copy_bandwidth_gbps"], None),
            ("roofline decode (tok/s, 1 stream)", res["roofline_tok_s"], None),
            ("decode, 1 stream (tok/s)", res["ours_decode_tok_s"], res.get("hf_decode_tok_s")),
            ("decode, 1 stream, eager step (tok/s)", res.get("ours_eager_step_decode_tok_s"), None),
            (f"throughput, {args.streams} streams (tok/s)", res["ours_batch_tok_s"], res.get("hf_batch_tok_s")),
            (f"throughput, {args.streams} streams, eager step", res.get("ours_eager_step_batch_tok_s"), None),
            ("decode, 1 stream, compiled step + GEMVs", res.get("ours_compiled_gemv_decode_tok_s"), None),
            (f"throughput, {args.streams} streams, compiled + GEMVs", res.get("ours_compiled_gemv_batch_tok_s"), None),
            (f"TTFT, {ttft_len}-token prompt (s)", res.get("ours_ttft_s"), res.get("hf_ttft_s"))]
    print(f"\n{'':<40} {'smollm3':>12} {'transformers':>14}")
    for label, ours, theirs in rows:
        if ours is None:
            continue
        print(f"{label:<40} {ours:>12} {'' if theirs is None else theirs:>14}")
    res["ours_pct_of_roofline"] = round(100 * res["ours_decode_tok_s"] / res["roofline_tok_s"], 1)
    if "hf_decode_tok_s" in res:
        res["decode_ratio_vs_hf"] = round(res["ours_decode_tok_s"] / res["hf_decode_tok_s"], 2)
        res["batch_ratio_vs_hf"] = round(res["ours_batch_tok_s"] / res["hf_batch_tok_s"], 2)
    print(f"\nours at {res['ours_pct_of_roofline']}% of the bandwidth roofline; "
          f"CUDA graphs: {res['ours_cuda_graphs']}")
    from smollm3.ops import decode_kernels
    from smollm3.ops import gemv as gemv_mod

    res["decode_kernel_tuning"] = decode_kernels.tuning_log  # per batch-1 projection: the tile chosen, in-graph time
    for row in decode_kernels.tuning_log:
        print(f"kernel {row['n']:>6}x{row['k']:<5} norm={row['norm']:d} swiglu={row['swiglu']:d} "
              f"residual={row['residual']:d} tile {row['tile']} {row['us']} us ({row['tbps']} TB/s)")
    res["gemv_tuning"] = gemv_mod.tuning_log  # per (b, N, K): cuBLAS vs best Triton tile, L2 flushed
    for row in gemv_mod.tuning_log:
        print(f"gemv b={row['b']:>2} {row['n']:>6}x{row['k']:<5} cuBLAS {row['cublas_us']:>7} us "
              f"({row['cublas_tbps']} TB/s)  triton {row['triton_us']} us ({row['triton_tbps']} TB/s) "
              f"-> {row['chosen']}")
    with open(args.out, "w") as f:
        json.dump(res, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
