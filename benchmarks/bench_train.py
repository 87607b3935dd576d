"""Training throughput of the real trainer (`smollm3.train.trainer.train`) on one GPU: tokens/s and MFU.

    python3 benchmarks/bench_train.py --preset smollm3-3b --seq 4096 --steps 12 --out results.json

    python3 benchmarks/bench_train.py --variants eager-ac,compile-noac-ga4,compile-ac-mb4 --profile compile-noac-ga4

    python3 benchmarks/bench_train.py --seq 32768 --docs full --hf-reference --variants compile-ac-ga1

Random-token shards feed the pretraining path. `--docs` picks their document lengths (see `document_lengths`):
short (exponential, mean 1024: intra-document masking on, few attention pairs), full (one document per window:
the most pairs a window can have) or recipe (the long-context stages' mix of sources). MFU is the trainer's:
each step's FLOPs counted from the documents it ran (`ModelConfig.forward_flops`, PaLM appendix B over the
causal pairs within documents), over its time and the GPU's bf16 peak; a row above 100% is a counting error, and
the benchmark stops on it with exit status 1 (bench_model.insane_mfu).
The pretraining path: bf16 compute over fp32 master weights (see fused|amp below), fused AdamW, clipping. A variant
name is dash-separated words: eager|compile (torch.compile of each decoder layer), ac|sac|noac (activation
checkpointing of every layer; sac: selective, attention's output kept, train.activation_checkpointing: selective),
optional varlen|flex|sdpa|cudnn (attention backend; default auto: cudnn where every row is one document, as with
--docs full at 32k or more, else varlen), optional fa2 (varlen on torch's own
flash-attention 2 kernels, not our Triton ones: ops.triton_attention and ops.qkv_attention off), mbN (micro-batch,
default --micro-batch), gaN (gradient-accumulation steps, default 1), optional fused|amp (train.grad_accum_fusion
true|false; default auto = fused on CUDA: bf16 weight copies once a step, weight gradients added into fp32 .grad by
their GEMMs), optional fp8row|fp8tensor (train.fp8 rowwise|tensorwise: FP8 forward and input-gradient GEMMs in the
decoder layers), optional graphs (train.cuda_graphs: each micro-batch's forward and backward replayed as a CUDA
graph), optional keepmmN (with sac: the last N layers keep their projections' outputs, train.keep_matmuls_layers),
optional dlogitsN (ops.stored_dlogits_bytes N GiB: the LM head's cross-entropy keeps d loss / d logits from the
forward instead of redoing the logits GEMM in the backward; a 32k micro-batch needs 8). Tokens/s count every
micro-batch of a step, so the optimizer's cost is amortised over the accumulation. The first steps (compilation,
allocator warm-up) are left out of the median.
`--profile VARIANT` reruns one variant for 5 steps, the last under torch.profiler, and prints how busy the GPU was
and its top kernels. `--hf-reference` times transformers' SmolLM3 forward+backward on one window-long document
(plain causal SDPA) before and after the variants; where that does not fit, it retries with transformers' gradient
checkpointing and says so, and where that does not fit either the record says out of memory.
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
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import yaml


DOCS = ("short", "full", "recipe")
RECIPES = Path(__file__).resolve().parents[1] / "src" / "smollm3" / "recipes" / "smollm3-3b"
# Tokens per document of the long-context stages' two web sources, from their dataset cards (GPT-2 tokens; the
# Llama-3 tokenizer SmolLM3 uses packs English a little tighter): DCLM-baseline 1.0, "4T token / 3B document"
# (mlfoundations/dclm-baseline-1.0); FineWeb-Edu's sample/350BT, 350B tokens in 339M rows. The other sources
# publish no such figure: they get the short mix's mean, 1024.
MEAN_DOC_TOKENS = {"data/dclm": 4e12 / 3e9, "data/fineweb-edu": 350e9 / 339e6}


def recipe_mix(seq: int) -> list[tuple[str, float, float]]:
    """[(source, token weight, mean document tokens)] of the long-context stage whose windows are closest to `seq`
    (recipes/smollm3-3b/long_context_32k.yaml up to 32,768, long_context_64k.yaml above): its sources' weights
    from SmolLM3's own stage configs (reference smollm3.md §3.2), their mean lengths from MEAN_DOC_TOKENS."""
    stage = RECIPES / ("long_context_32k.yaml" if seq <= 32768 else "long_context_64k.yaml")
    weights = yaml.safe_load(stage.read_text())["data"]["stages"][0]["weights"]
    return [(name, float(w), MEAN_DOC_TOKENS.get(name, 1024.0)) for name, w in weights.items()]


def document_lengths(docs: str, seq: int, n_tokens: int, rng: np.random.Generator) -> Iterator[int]:
    """Lengths of the documents written to the shards, at least `n_tokens` in all, drawn as they are written (so
    short's draws interleave with the tokens' as they always have: its shards are those of the earlier records).
    The loader cuts the token stream into windows of seq + 1 (inputs and the last label), so a document may run
    across windows.
    short: exponential, mean 1024, at least 16 (web text's many short pages).
    full: seq + 1 tokens each, so every window is exactly one document (T(T+1)/2 pairs, the most there are).
    recipe: the long-context stages' sources in their token weights (`recipe_mix`), each document exponential
      around its source's mean. An approximation: SmolLM3 published its stages' weights, not their length
      histograms; its blog says the stages needed no special long-document data, and this mix is what the
      weights and the sources' cards give (a mean of about 1,100 tokens)."""
    if docs not in DOCS:
        raise ValueError(f"--docs {docs!r} is unknown; choose one of {', '.join(DOCS)}")
    return _lengths(docs, seq, n_tokens, rng)


def _lengths(docs: str, seq: int, n_tokens: int, rng: np.random.Generator) -> Iterator[int]:
    if docs == "full":
        yield from [seq + 1] * -(-n_tokens // (seq + 1))
        return
    if docs == "short":
        means, probs = np.array([1024.0]), np.array([1.0])
    else:
        mix = recipe_mix(seq)
        means = np.array([m for _, _, m in mix])
        probs = np.array([w / m for _, w, m in mix])  # documents drawn so that each source's tokens match its weight
        probs /= probs.sum()
    written = 0
    while written < n_tokens:
        mean = means[rng.choice(len(means), p=probs)] if len(means) > 1 else means[0]
        n = max(16, int(rng.exponential(mean)))
        yield n
        written += n


def make_assets(root: Path, vocab: int, n_tokens: int, docs: str = "short", seq: int = 4096):
    from tokenizers import Tokenizer as HFTok
    from tokenizers import models

    from smollm3.data.shards import ShardWriter
    from smollm3.tokenizer import Tokenizer

    # the trainer only needs a tokenizer no larger than the model's vocabulary (for checks and HF exports)
    Tokenizer(HFTok(models.WordLevel({"<unk>": 0, "</s>": 1}, unk_token="<unk>")), eos_token="</s>").save(root / "tok")
    rng = np.random.default_rng(0)
    with ShardWriter(root / "shards" / "000.ds", 4, "random") as w:
        for n in document_lengths(docs, seq, n_tokens, rng):
            w.write(rng.integers(2, vocab, n))


def parse_variant(name: str, micro: int) -> dict:
    words = name.split("-")
    v = {"compile_": "compile" in words, "ac": "selective" if "sac" in words else "ac" in words, "micro": micro,
         "accum": 1, "attn": "auto",
         "fusion": True if "fused" in words else False if "amp" in words else None,
         "fp8": "rowwise" if "fp8row" in words else "tensorwise" if "fp8tensor" in words else None,
         "graphs": "graphs" in words}
    for w in words:
        if w.startswith("mb") and w[2:].isdigit():
            v["micro"] = int(w[2:])
        elif w.startswith("ga") and w[2:].isdigit():
            v["accum"] = int(w[2:])
        elif w.startswith("keepmm") and w[6:].isdigit():  # with sac: the last N layers keep their matmul outputs
            v["keep_matmuls"] = int(w[6:])
        elif w in ("varlen", "flex", "sdpa", "cudnn"):
            v["attn"] = w
        elif w.startswith("dlogits") and w[7:].isdigit():  # the LM head keeps d loss / d logits up to N GiB
            v.setdefault("ops", {})["stored_dlogits_bytes"] = int(w[7:]) * 2**30
        elif w == "fa2":
            v.setdefault("ops", {}).update(triton_attention=False, qkv_attention=False)
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
                     "keep_matmuls_layers": variant.get("keep_matmuls", 0),
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
    # the profiled step is slowed by the profiler and its trace export: not a step of the row
    steady = [r for r in records[min(3, len(records) - 1):] if r["step"] != profile_step] or records[-1:]
    step_tokens = micro * accum * seq * int(os.environ.get("WORLD_SIZE", "1"))
    row = {"name": name, "micro_batch": micro, "grad_accum": accum, "attn": attn, "compile": compile_, "ac": ac,
           "grad_accum_fusion": fusion, "fp8": fp8, "cuda_graphs": graphs,
           "keep_matmuls_layers": variant.get("keep_matmuls", 0),
           "ops": yaml.safe_load((out / "config.yaml").read_text())["ops"],  # as the trainer resolved them
           "tokens_per_s": round(statistics.median(r["tokens_per_s"] for r in steady)),
           "mfu": round(statistics.median(r.get("mfu", 0.0) for r in steady), 4),
           # the trainer's count from the steps' own documents; the per-token figure shows attention's share
           "flops_per_token": round(statistics.median(r["flops"] for r in steady) / step_tokens),
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


def hf_reference(preset_name: str, seq: int, device: str = "cuda", warmup: int = 3, iters: int = 10) -> dict:
    """transformers' SmolLM3 forward+backward alone (bf16 weights, plain causal SDPA: one window-long document,
    1 x seq), timed as in bench_model.py: the reference the trainer's tokens/s are compared with, in the same run.
    Where it does not fit, it is timed again with transformers' own gradient checkpointing (the row says which);
    where that does not fit either, the row says out of memory. MFU over the causal pairs of the window."""
    import gc

    import transformers
    from bench_model import measure

    from smollm3 import preset
    from smollm3.config import causal_pairs
    from smollm3.train.trainer import _peak_flops

    cfg = preset(preset_name)
    cfg.max_position_embeddings = max(cfg.max_position_embeddings, seq)
    hf_cfg = transformers.AutoConfig.for_model("smollm3", **{
        k: v for k, v in cfg.to_hf_dict().items() if k not in ("architectures", "model_type", "torch_dtype")})
    hf_cfg._attn_implementation = "sdpa"
    with torch.device(device):
        hf = transformers.SmolLM3ForCausalLM(hf_cfg).to(torch.bfloat16)
    hf.train()
    params = list(hf.parameters())
    ids = torch.randint(0, cfg.vocab_size, (1, seq), generator=torch.Generator().manual_seed(0)).to(device)
    flops = 3 * cfg.forward_flops(seq, causal_pairs([seq]))  # the LM head runs on every position
    peak_tflops = _peak_flops(torch.device(device)) / 1e12
    name = f"transformers {transformers.__version__}, causal (sdpa), fwd+bwd only"
    row = None
    for checkpointing in (False, True):
        if checkpointing:  # transformers 5.2x renamed it (the old name warns); the GPU machine may have either
            enable = getattr(hf, "activation_checkpointing_enable", None) or hf.gradient_checkpointing_enable
            enable({"use_reentrant": False})
        try:
            row = measure(name + (", gradient checkpointing" if checkpointing else ""), lambda x: hf(x).logits,
                          params, ids, torch.roll(ids, -1, 1), warmup, iters, flops, peak_tflops)
        except torch.OutOfMemoryError:
            peak = round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None
            print(f"{name}: out of memory {'with' if checkpointing else 'without'} gradient checkpointing "
                  f"(peak {peak} GiB)", flush=True)
        for p in params:
            p.grad = None
        gc.collect()  # the failed attempt's activations, held by its traceback until here
        if device == "cuda":
            torch.cuda.empty_cache()
        if row is not None:
            row["gradient_checkpointing"] = checkpointing
            break
    else:
        row = {"name": name, "oom": True, "gradient_checkpointing": True, "peak_mem_gib": peak}
    hf = params = None  # free it before the trainer runs
    if device == "cuda":
        torch.cuda.empty_cache()
    return row


def profile(root: Path, name: str, preset: str, seq: int, micro: int, steps: int = 5) -> dict:
    """Run `name` for `steps` steps with the last one under torch.profiler (the trainer's `log.profile_step`, so
    compilation and warm-up are outside it); print and return its summary: wall vs GPU-busy time, top kernels."""
    row = run(root, name + "-profiled", preset, seq, steps, parse_variant(name, micro), profile_step=steps)
    summary = json.loads((root / f"{name}-profiled" / "profile" / f"step{steps}_rank0_summary.json").read_text())
    summary["row"] = row  # its tokens/s and MFU from the steps before the profiled one
    print(f"\nprofile of {name}, step {steps}: wall {summary['wall_ms']} ms, GPU busy {summary['gpu_busy_ms']} ms, "
          f"kernel sum {summary['kernel_sum_ms']} ms over {summary['kernels']} kernels; idle gaps {summary['gaps']}")
    for g in summary["longest_gaps"][:12]:
        print(f"  gap {g['us']:9.1f} us at {g['at_ms']:8.2f} ms  after {g['after'][:50]}  before {g['before'][:50]}")
    for r in summary["top"][:25]:
        print(f"{r['ms']:9.2f} ms {100 * r['ms'] / max(summary['kernel_sum_ms'], 1e-9):5.1f}%  {r['calls']:6d}x  "
              f"{r['kernel']}")
    return summary


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="smollm3-3b")
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--docs", choices=DOCS, default="short",
                    help="document lengths: short (exponential, mean 1024), full (one per window), recipe (the "
                         "long-context stages' mix)")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--micro-batch", type=int, default=1)
    ap.add_argument("--variants", default="eager-ac,compile-ac")
    ap.add_argument("--hf-reference", action="store_true",
                    help="time transformers' fwd+bwd before and after the variants, same run; ratios are against the "
                         "faster of the two (the card's clock drifts under its power cap)")
    ap.add_argument("--profile", default=None, help="a variant to rerun under torch.profiler")
    ap.add_argument("--profile-out", default=None, help="folder to copy the profiled step's trace and kernel table to")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    from bench_model import insane_mfu

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
            make_assets(root, vocab, n_tokens, args.docs, args.seq)
            (root / "ready").write_text("ok")
        while not (root / "ready").exists():
            time.sleep(0.5)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        print(f"device {torch.cuda.get_device_name() if device == 'cuda' else 'cpu'}  torch {torch.__version__}  "
              f"preset {args.preset}  seq {args.seq}  docs {args.docs}  {args.steps} steps", flush=True)
        reference = hf_reference(args.preset, args.seq, device) if args.hf_reference and world == 1 else None
        top = None
        result = {}

        def write():  # after every variant, so a run cut short keeps what finished
            ratios = {r["name"]: round(r["tokens_per_s"] / reference["tokens_per_s"], 3) for r in rows
                      if reference and reference.get("tokens_per_s") and r.get("tokens_per_s")}
            result.update({
                "date": time.strftime("%Y-%m-%d"),
                "device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__,
                "preset": args.preset, "seq": args.seq, "docs": args.docs, "gpus": world,
                "reference": reference, "ratio_to_reference": ratios or None, "rows": rows,
                "profile_variant": args.profile, "profile_top": top})
            if args.out and rank == 0:
                Path(args.out).write_text(json.dumps(result, indent=2))
            insane = insane_mfu(rows + [reference])
            if insane:
                raise SystemExit(insane)  # exit status 1, the line on stderr; the JSON above keeps the evidence

        write()
        for variant in variants:
            rows.append(run(root, variant, args.preset, args.seq, args.steps, parse_variant(variant, args.micro_batch)))
            write()
        if reference is not None and variants:
            after = hf_reference(args.preset, args.seq, device)
            if reference.get("oom") or after.get("oom"):
                reference = {**reference, "after": after}
            else:
                reference = {**max(reference, after, key=lambda r: r["tokens_per_s"]),
                             "tokens_per_s_before_after": [reference["tokens_per_s"], after["tokens_per_s"]]}
            write()
        if args.profile:
            top = profile(root, args.profile, args.preset, args.seq, args.micro_batch)
            write()
        if args.profile and args.profile_out:
            shutil.copytree(root / f"{args.profile}-profiled" / "profile", args.profile_out, dirs_exist_ok=True)
    if result.get("ratio_to_reference"):
        print("transformers before and after the variants:", reference.get("tokens_per_s_before_after"))
        print("ratio to transformers fwd+bwd (the faster of the two):", result["ratio_to_reference"])
    return result


if __name__ == "__main__":
    main()
