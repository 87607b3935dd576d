"""Training throughput of the real trainer (`smollm3.train.trainer.train`) on one GPU: tokens/s and MFU.

    python3 benchmarks/bench_train.py --preset smollm3-3b --seq 4096 --steps 12 --out results.json

    python3 benchmarks/bench_train.py --variants eager-ac,compile-noac-ga4,compile-ac-mb4 --profile compile-noac-ga4

Random-token shards (document lengths exponential, mean 1024, so intra-document masking is on) feed the pretraining
path: bf16 compute over fp32 master weights (see fused|amp below), fused AdamW, clipping. A variant name is
dash-separated words: eager|compile (torch.compile of each decoder layer), ac|noac (activation checkpointing of
every layer), optional varlen|flex|sdpa (attention backend, default auto = varlen), mbN (micro-batch, default
--micro-batch), gaN (gradient-accumulation steps, default 1), optional fused|amp (train.grad_accum_fusion
true|false; default auto = fused on CUDA: bf16 weight copies once a step, weight gradients added into fp32 .grad by
their GEMMs), optional fp8row|fp8tensor (train.fp8 rowwise|tensorwise: FP8 forward and input-gradient GEMMs in the
decoder layers), optional graphs (train.cuda_graphs: each micro-batch's forward and backward replayed as a CUDA
graph). Tokens/s count every micro-batch of a step, so the optimizer's cost is amortised over the
accumulation. The first steps (compilation, allocator warm-up) are left out of the median.
`--profile VARIANT` reruns one variant for 5 steps, the last under torch.profiler, and prints how busy the GPU was
and its top kernels.
Under `torchrun --nproc_per_node N` the same variants run with FSDP2 over N GPUs (tokens/s are global; each rank
takes micro-batch x grad-accum sequences a step).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml


def make_assets(root: Path, vocab: int, n_tokens: int):
    from tokenizers import Tokenizer as HFTok
    from tokenizers import models

    from smollm3.data.shards import ShardWriter
    from smollm3.tokenizer import Tokenizer

    # the trainer only needs a tokenizer no larger than the model's vocabulary (for checks and HF exports)
    Tokenizer(HFTok(models.WordLevel({"<unk>": 0, "</s>": 1}, unk_token="<unk>")), eos_token="</s>").save(root / "tok")
    rng = np.random.default_rng(0)
    with ShardWriter(root / "shards" / "000.ds", 4, "random") as w:
        written = 0
        while written < n_tokens:
            n = max(16, int(rng.exponential(1024)))
            w.write(rng.integers(2, vocab, n))
            written += n


def parse_variant(name: str, micro: int) -> dict:
    words = name.split("-")
    v = {"compile_": "compile" in words, "ac": "ac" in words, "micro": micro, "accum": 1, "attn": "auto",
         "fusion": True if "fused" in words else False if "amp" in words else None,
         "fp8": "rowwise" if "fp8row" in words else "tensorwise" if "fp8tensor" in words else None,
         "graphs": "graphs" in words}
    for w in words:
        if w.startswith("mb") and w[2:].isdigit():
            v["micro"] = int(w[2:])
        elif w.startswith("ga") and w[2:].isdigit():
            v["accum"] = int(w[2:])
        elif w in ("varlen", "flex", "sdpa"):
            v["attn"] = w
    return v


def run(root: Path, name: str, preset: str, seq: int, steps: int, variant: dict, profile_step: int | None = None) -> dict:
    """Train `steps` steps of `variant` (parse_variant's dict) and return its row: median tokens/s, MFU, peak."""
    from smollm3.train.config import load_train_config
    from smollm3.train.trainer import train

    micro, accum, compile_, ac = variant["micro"], variant["accum"], variant["compile_"], variant["ac"]
    attn, fusion, fp8, graphs = variant["attn"], variant["fusion"], variant["fp8"], variant["graphs"]

    out = root / name
    cfg = {"out_dir": str(out), "model": {"preset": preset, "overrides": {"max_position_embeddings": seq}},
           "ops": {"attn_backend": attn, **variant.get("ops", {})},
           "data": {"kind": "pretrain", "tokenizer": str(root / "tok"), "seq_len": seq,
                    "stages": [{"start_tokens": 0, "weights": {str(root / "shards"): 1.0}}]},
           "train": {"steps": steps, "micro_batch": micro, "grad_accum": accum, "dtype": "bfloat16",
                     "compile": compile_, "activation_checkpointing": ac, "grad_accum_fusion": fusion,
                     "fp8": fp8, "cuda_graphs": graphs},
           "optim": {"lr": 2e-4, "warmup_steps": 2},
           "checkpoint": {"every": None}, "log": {"every": 1, "tensorboard": False, "profile_step": profile_step}}
    (root / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    from torch._dynamo.utils import counters

    counters.clear()
    torch._dynamo.reset()
    t0 = time.time()
    try:
        result = train(load_train_config(root / f"{name}.yaml"))
    except torch.OutOfMemoryError:
        peak = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        print(f"{name:<28} out of memory (peak {peak:.2f} GiB)", flush=True)
        import gc

        gc.collect()
        torch.cuda.empty_cache()
        return {"name": name, "micro_batch": micro, "grad_accum": accum, "oom": True, "peak_mem_gib": peak}
    wall = time.time() - t0
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun rank 0 writes the metrics and reports
        return {"name": name}
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steady = records[min(3, len(records) - 1):]
    row = {"name": name, "micro_batch": micro, "grad_accum": accum, "attn": attn, "compile": compile_, "ac": ac,
           "grad_accum_fusion": fusion, "fp8": fp8, "cuda_graphs": graphs,
           "tokens_per_s": round(statistics.median(r["tokens_per_s"] for r in steady)),
           "mfu": round(statistics.median(r.get("mfu", 0.0) for r in steady), 4),
           "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
           "wall_s": round(wall, 1), "graph_breaks": sum(counters["graph_break"].values()),
           "graphs_compiled": counters["stats"]["unique_graphs"],
           "steps_tokens_per_s": [round(r["tokens_per_s"]) for r in records],
           "loss_first_last": [round(records[0]["loss"], 4), round(records[-1]["loss"], 4)],
           "graph_stats": result.get("cuda_graphs")}
    print(f"{name:<28} {row['tokens_per_s']:>9,} tok/s  MFU {row['mfu']:6.1%}  peak {row['peak_mem_gib']} GiB  "
          f"wall {wall:6.1f} s  graph breaks {row['graph_breaks']}  loss {row['loss_first_last']}"
          + (f"  CUDA graphs {row['graph_stats']}" if row["graph_stats"] else ""), flush=True)
    return row


def hf_reference(preset_name: str, seq: int) -> dict:
    """transformers' SmolLM3 forward+backward alone (bf16 weights, plain causal SDPA, 1 x seq), timed as in
    bench_model.py: the reference the trainer's tokens/s are compared with, in the same run."""
    import transformers
    from bench_model import measure

    from smollm3 import preset

    cfg = preset(preset_name)
    cfg.max_position_embeddings = max(cfg.max_position_embeddings, seq)
    hf_cfg = transformers.AutoConfig.for_model("smollm3", **{
        k: v for k, v in cfg.to_hf_dict().items() if k not in ("architectures", "model_type", "torch_dtype")})
    hf_cfg._attn_implementation = "sdpa"
    with torch.device("cuda"):
        hf = transformers.SmolLM3ForCausalLM(hf_cfg).to(torch.bfloat16)
    hf.train()
    ids = torch.randint(0, cfg.vocab_size, (1, seq), generator=torch.Generator().manual_seed(0)).cuda()
    row = measure(f"transformers {transformers.__version__}, causal (sdpa), fwd+bwd only", lambda x: hf(x).logits,
                  list(hf.parameters()), ids, torch.roll(ids, -1, 1), 3, 10, cfg, 989.0)
    hf = None  # free it before the trainer runs
    torch.cuda.empty_cache()
    return row


def profile(root: Path, name: str, preset: str, seq: int, micro: int, steps: int = 5) -> dict:
    """Run `name` for `steps` steps with the last one under torch.profiler (the trainer's `log.profile_step`, so
    compilation and warm-up are outside it); print and return its summary: wall vs GPU-busy time, top kernels."""
    run(root, name + "-profiled", preset, seq, steps, parse_variant(name, micro), profile_step=steps)
    summary = json.loads((root / f"{name}-profiled" / "profile" / f"step{steps}_rank0_summary.json").read_text())
    print(f"\nprofile of {name}, step {steps}: wall {summary['wall_ms']} ms, GPU busy {summary['gpu_busy_ms']} ms, "
          f"kernel sum {summary['kernel_sum_ms']} ms over {summary['kernels']} kernels; idle gaps {summary['gaps']}")
    for g in summary["longest_gaps"][:12]:
        print(f"  gap {g['us']:9.1f} us at {g['at_ms']:8.2f} ms  after {g['after'][:50]}  before {g['before'][:50]}")
    for r in summary["top"][:25]:
        print(f"{r['ms']:9.2f} ms {100 * r['ms'] / max(summary['kernel_sum_ms'], 1e-9):5.1f}%  {r['calls']:6d}x  "
              f"{r['kernel']}")
    return summary


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="smollm3-3b")
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--micro-batch", type=int, default=1)
    ap.add_argument("--variants", default="eager-ac,compile-ac")
    ap.add_argument("--hf-reference", action="store_true",
                    help="time transformers' fwd+bwd before and after the variants, same run; ratios are against the "
                         "faster of the two (the card's clock drifts under its power cap)")
    ap.add_argument("--profile", default=None, help="a variant to rerun under torch.profiler")
    ap.add_argument("--profile-out", default=None, help="folder to copy the profiled step's trace and kernel table to")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    from smollm3 import preset

    vocab = preset(args.preset).vocab_size
    rows = []
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    with tempfile.TemporaryDirectory() as tmp:
        # under torchrun every rank reads the same shards: rank 0 writes them to a shared folder, the others wait
        root = Path(tmp) if world == 1 else Path(tempfile.gettempdir()) / f"bench_train_{os.environ['MASTER_PORT']}"
        variants = [v for v in args.variants.split(",") if v]
        most = max([parse_variant(v, args.micro_batch) for v in variants + [args.profile or "x"]],
                   key=lambda v: v["micro"] * v["accum"])
        # each rank takes its own micro-batches of the global batch: world x the tokens
        n_tokens = args.seq * most["micro"] * most["accum"] * (args.steps + 2) * world
        if rank == 0:
            root.mkdir(parents=True, exist_ok=True)
            make_assets(root, vocab, n_tokens)
            (root / "ready").write_text("ok")
        while not (root / "ready").exists():
            time.sleep(0.5)
        print(f"device {torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'}  torch {torch.__version__}  preset {args.preset}  "
              f"seq {args.seq}  {args.steps} steps", flush=True)
        reference = hf_reference(args.preset, args.seq) if args.hf_reference and world == 1 else None
        top = None

        def write():  # after every variant, so a run cut short keeps what finished
            if args.out and rank == 0:
                device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
                Path(args.out).write_text(json.dumps({
                    "date": time.strftime("%Y-%m-%d"), "device": device, "torch": torch.__version__,
                    "preset": args.preset, "seq": args.seq, "gpus": world, "reference": reference, "rows": rows,
                    "profile_variant": args.profile, "profile_top": top}, indent=2))

        for variant in variants:
            rows.append(run(root, variant, args.preset, args.seq, args.steps, parse_variant(variant, args.micro_batch)))
            write()
        if reference is not None and variants:
            after = hf_reference(args.preset, args.seq)
            reference = {**max(reference, after, key=lambda r: r["tokens_per_s"]),
                         "tokens_per_s_before_after": [reference["tokens_per_s"], after["tokens_per_s"]]}
            write()
        if args.profile:
            top = profile(root, args.profile, args.preset, args.seq, args.micro_batch)
            write()
        if args.profile and args.profile_out:
            shutil.copytree(root / f"{args.profile}-profiled" / "profile", args.profile_out, dirs_exist_ok=True)
    if reference:
        print("transformers before and after the variants:", reference.get("tokens_per_s_before_after"))
        print("ratio to transformers fwd+bwd (the faster of the two):", {r["name"]: round(r["tokens_per_s"] / reference["tokens_per_s"], 3)
                                                 for r in rows if "tokens_per_s" in r})


if __name__ == "__main__":
    main()
