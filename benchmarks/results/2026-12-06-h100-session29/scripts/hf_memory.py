"""Peak GPU memory of transformers' SmolLM3 3B forward+backward without gradient checkpointing (bench_train's
reference, built the same way: bf16 weights, SDPA, one causal document of `seq` tokens, loss over its logits) at
growing lengths: does target 11's reference fit a 141 GB H200 at 32,768 without checkpointing (it does not fit an
80 GB H100)? Activations grow linearly in seq (SDPA keeps no seq x seq matrix), so two lengths extrapolate.

    PYTHONPATH=src:benchmarks python3 hf_memory.py OUT.json 4096,8192,16384
"""
import json
import sys

import torch
import transformers

from smollm3 import preset


def main():
    out, seqs = sys.argv[1], [int(s) for s in sys.argv[2].split(",")]
    cfg = preset("smollm3-3b")
    cfg.max_position_embeddings = max(cfg.max_position_embeddings, max(seqs))
    hf_cfg = transformers.AutoConfig.for_model("smollm3", **{
        k: v for k, v in cfg.to_hf_dict().items() if k not in ("architectures", "model_type", "torch_dtype")})
    hf_cfg._attn_implementation = "sdpa"
    with torch.device("cuda"):
        hf = transformers.SmolLM3ForCausalLM(hf_cfg).to(torch.bfloat16)
    hf.train()
    res = {"device": torch.cuda.get_device_name(), "transformers": transformers.__version__,
           "total_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 2),
           "weights_gib": round(torch.cuda.memory_allocated() / 2**30, 2), "rows": []}
    for seq in seqs:
        ids = torch.randint(0, cfg.vocab_size, (1, seq), device="cuda")
        torch.cuda.reset_peak_memory_stats()
        try:
            logits = hf(ids).logits
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), torch.roll(ids, -1, 1).flatten())
            loss.backward()  # logits alive meanwhile, as in bench_model.measure
            row = {"seq": seq, "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}
        except torch.OutOfMemoryError:
            row = {"seq": seq, "oom": True, "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}
        loss = logits = None
        for p in hf.parameters():
            p.grad = None
        torch.cuda.empty_cache()
        res["rows"].append(row)
        print(row, flush=True)
        with open(out, "w") as f:
            json.dump(res, f, indent=1)
    done = [r for r in res["rows"] if not r.get("oom")]
    if len(done) >= 2:
        (a, pa), (b, pb) = (done[-2]["seq"], done[-2]["peak_gib"]), (done[-1]["seq"], done[-1]["peak_gib"])
        per_token = (pb - pa) / (b - a)
        res["extrapolated_peak_gib_32768"] = round(pb + per_token * (32768 - b), 1)
        print(f"per token {per_token * 2**20:.1f} KiB; at 32,768: {res['extrapolated_peak_gib_32768']} GiB", flush=True)
        with open(out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
