"""Forward+backward throughput and peak memory of a SmolLM3 preset, ours beside transformers' SmolLM3 in one run.

    python3 benchmarks/bench_model.py --preset smollm3-3b --seq 4096 --out results.json

Rows: ours with plain causal attention (SDPA), ours with packed documents (document-masked: the auto backend,
then each GPU backend), and transformers' SmolLM3ForCausalLM (SDPA, plain causal) on the same bf16 weights.
MFU: the step's training FLOPs (3 x ModelConfig.forward_flops, PaLM appendix B over the (query, key) pairs the
step's attention scores: the whole batch's causal windows for the causal rows, each packed document's own for the
document-masked rows) over its time and the GPU's dense bf16 peak (--peak-tflops).
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch
import torch.nn.functional as F

from smollm3 import build_model, preset
from smollm3.checkpoint import with_settings
from smollm3.config import causal_pairs
from smollm3.ops.attention import _varlen_impl
from smollm3.ops.settings import OpSettings


def packed_positions(seq: int, mean_doc: int, gen: torch.Generator) -> torch.Tensor:
    """Document lengths drawn from an exponential (like web text) until the row is full; positions restart per doc."""
    pos, used = [], 0
    while used < seq:
        n = max(16, int(torch.empty(1).exponential_(1 / mean_doc, generator=gen).item()))
        n = min(n, seq - used)
        pos.append(torch.arange(n))
        used += n
    return torch.cat(pos)


def document_lengths(position_ids: torch.Tensor) -> list[int]:
    """Each row's documents (a document starts where positions restart at 0), every row's in turn."""
    lengths = []
    for row in position_ids.cpu():
        starts = torch.nonzero(row == 0).flatten().tolist() + [len(row)]
        lengths += [b - a for a, b in zip(starts, starts[1:])]
    return lengths


def step_time(fn, warmup: int, iters: int) -> float:
    """Median seconds of `fn`: CUDA events on a GPU, the host clock elsewhere (CPU tests of the benchmarks)."""
    cuda = torch.cuda.is_available()
    for _ in range(warmup):
        fn()
    if cuda:
        torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        if not cuda:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
            continue
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return sorted(times)[len(times) // 2]  # median


def measure(name, model_fn, params, ids, labels, warmup, iters, flops, peak_tflops):
    """One row: median step time of forward + backward of `ids`, whose training FLOPs are `flops`; MFU against
    `peak_tflops` (none where it is 0: an unknown device)."""
    def step():
        logits = model_fn(ids)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten())
        loss.backward()
        for p in params:
            p.grad = None

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t = step_time(step, warmup, iters)
    tokens = ids.numel()
    tps = tokens / t
    mfu = flops / t / (peak_tflops * 1e12) if peak_tflops else None
    row = {"name": name, "step_s": round(t, 4), "tokens_per_s": round(tps), "mfu": mfu and round(mfu, 4),
           "flops_per_token": round(flops / tokens),
           "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None}
    print(f"{name:<44} {t * 1e3:9.1f} ms {tps:11,.0f} tok/s  MFU {mfu or 0.0:6.1%}  peak {row['peak_mem_gib']} GiB",
          flush=True)
    return row


def insane_mfu(rows: list[dict]) -> str | None:
    """One line naming the first row whose MFU is above 100% (more FLOPs a second than the GPU's peak: the FLOPs
    were miscounted or the clock misread), else None."""
    for r in rows:
        if r and (r.get("mfu") or 0.0) > 1.0:
            return (f"{r['name']}: MFU {r['mfu']:.1%} is above 100%: the FLOPs per step ({r.get('flops_per_token')} "
                    "a token) or the step time is wrong; fix the count before reading any MFU of this run")
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="smollm3-3b")
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--mean-doc", type=int, default=1024, help="mean packed document length for the masked rows")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H100 SXM 989, H200 989)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    torch.manual_seed(0)
    cfg = preset(args.preset)
    cfg.max_position_embeddings = max(cfg.max_position_embeddings, args.seq)
    model = build_model(cfg, device="cuda", dtype=torch.bfloat16)
    params = list(model.parameters())
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, cfg.vocab_size, (args.batch, args.seq), generator=gen).cuda()
    labels = torch.roll(ids, -1, 1)
    pos = torch.stack([packed_positions(args.seq, args.mean_doc, gen) for _ in range(args.batch)]).cuda()
    n_docs = int((pos == 0).sum())
    # training FLOPs of a step (3 x forward): the causal rows score every window's pairs, the packed rows their docs'
    causal_flops = 3 * cfg.forward_flops(ids.numel(), causal_pairs([args.seq] * args.batch))
    packed_flops = 3 * cfg.forward_flops(ids.numel(), causal_pairs(document_lengths(pos)))
    print(f"device {torch.cuda.get_device_name()}  torch {torch.__version__}  preset {args.preset} "
          f"({cfg.num_params() / 1e9:.3f}B)  batch {args.batch} x seq {args.seq}  packed docs {n_docs}")
    rows = []

    def ours(backend, packed):
        """-> (forward, parameters) of a copy of the model whose attention is `backend`'s."""
        twin = with_settings(model, OpSettings(attn_backend=backend))
        return (lambda x: twin(x, position_ids=pos if packed else None)), list(twin.parameters())

    rows.append(measure("ours, causal (sdpa)", *ours("auto", False), ids, labels, args.warmup, args.iters,
                        causal_flops, args.peak_tflops))
    rows.append(measure("ours, doc-masked (auto)", *ours("auto", True), ids, labels, args.warmup,
                        args.iters, packed_flops, args.peak_tflops))
    backends = ["flex", "sdpa"] + (["varlen"] if _varlen_impl() is not None else [])
    for b in backends:
        rows.append(measure(f"ours, doc-masked ({b})", *ours(b, True), ids, labels, args.warmup, args.iters,
                            packed_flops, args.peak_tflops))

    import transformers

    hf_cfg = transformers.AutoConfig.for_model("smollm3", **{
        k: v for k, v in cfg.to_hf_dict().items() if k not in ("architectures", "model_type", "torch_dtype")})
    hf_cfg._attn_implementation = "sdpa"
    with torch.device("cuda"):
        hf = transformers.SmolLM3ForCausalLM(hf_cfg).to(torch.bfloat16)
    hf.load_state_dict(model.state_dict(), strict=False)
    hf.train()
    model.cpu()  # free the GPU for the reference (the closures above still name it)
    del params
    torch.cuda.empty_cache()
    hf_params = list(hf.parameters())
    rows.append(measure(f"transformers {transformers.__version__}, causal (sdpa)", lambda x: hf(x).logits, hf_params,
                        ids, labels, args.warmup, args.iters, causal_flops, args.peak_tflops))

    base = rows[-1]["tokens_per_s"]
    print("\nratio to transformers:", {r["name"]: round(r["tokens_per_s"] / base, 3) for r in rows[:-1]})
    insane = insane_mfu(rows)
    result = {"date": time.strftime("%Y-%m-%d"), "device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "transformers": transformers.__version__, "host": platform.node(), "preset": args.preset,
              "batch": args.batch, "seq": args.seq, "packed_docs": n_docs, "peak_tflops": args.peak_tflops,
              "rows": rows}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    if insane:
        raise SystemExit(insane)  # exit status 1, after the JSON that shows it


if __name__ == "__main__":
    main()
