"""The decode step's projections at small batches (8, 32 rows), timed as a decode step runs them: back to back
inside a CUDA graph, on copies of the weight that overflow the L2 cache. cuBLAS (F.linear), the tile that
ops/gemv.py's tuner picks today (timed alone with the L2 flushed), and every Triton tile of a wider list, in TB/s
of weight read. Is there headroom at 32 streams?

    PYTHONPATH=src python3 gemm32.py OUT.json
"""
import json
import sys
import time

import torch
import torch.nn.functional as F

from smollm3.ops import gemv

SHAPES = {"qkv": (3072, 2048), "o_proj": (2048, 2048), "gate_up": (22016, 2048), "down": (2048, 11008),
          "lm_head": (128256, 2048)}
EXTRA_DOT = [(64, 128, 4, 5), (128, 64, 4, 6), (128, 128, 8, 4), (256, 64, 8, 4), (32, 256, 4, 4), (64, 256, 4, 4),
             (128, 256, 8, 3), (64, 64, 4, 8), (128, 128, 4, 4), (256, 128, 8, 3)]


def in_graph_us(fn_for_copy, copies, reps):
    fn_for_copy(copies[0])
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for i in range(reps):
            fn_for_copy(copies[i % len(copies)])
    g.replay()
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    for _ in range(10):
        g.replay()
    e.record()
    e.synchronize()
    return s.elapsed_time(e) / (10 * reps) * 1e3


def main():
    out = sys.argv[1]
    res = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "device": torch.cuda.get_device_name(), "rows": []}
    torch.manual_seed(0)
    for b in (32, 8):
        for name, (n, k) in SHAPES.items():
            w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k ** 0.5
            nbytes = w.numel() * 2
            copies = [w] + [w.clone() for _ in range(max(1, min(7, (200 << 20) // nbytes)))]
            reps = max(8, len(copies))
            x = torch.randn(b, k, device="cuda", dtype=torch.bfloat16)
            ref = F.linear(x.float(), w.float())
            row = {"b": b, "shape": name, "n": n, "k": k, "mb": round(nbytes / 2**20, 1)}
            row["cublas_us"] = round(in_graph_us(lambda ww, x=x: F.linear(x, ww), copies, reps), 2)
            chosen = gemv.choose(x, w)
            row["tuner_choice"] = "cublas" if chosen == gemv.ATEN else list(chosen)
            if chosen != gemv.ATEN:
                row["tuner_choice_us"] = round(in_graph_us(lambda ww, x=x, c=chosen: gemv.launch(x, ww, c), copies, reps), 2)
            bm = max(16, 1 << (b - 1).bit_length())
            cands = gemv.candidates(b, n, k) + [(bm, bn, bk, True, nw, ns, 1) for bn, bk, nw, ns in EXTRA_DOT
                                                if k % bk == 0]
            tiles = {}
            for cfg in cands:
                try:
                    y = gemv.launch(x, w, cfg)
                    err = ((y.float() - ref).norm() / ref.norm()).item()
                    if not err < 2e-2:
                        tiles[str(list(cfg))] = f"wrong ({err:.3g})"
                        continue
                    tiles[str(list(cfg))] = round(in_graph_us(lambda ww, x=x, c=cfg: gemv.launch(x, ww, c), copies, reps),
                                                  2)
                except Exception as ex:  # noqa: BLE001
                    tiles[str(list(cfg))] = f"failed: {type(ex).__name__}"
            timed = {c: t for c, t in tiles.items() if isinstance(t, float)}
            best = min(timed, key=timed.get)
            row["best_triton"] = best
            row["best_triton_us"] = timed[best]
            for key in ("cublas_us", "tuner_choice_us", "best_triton_us"):
                if key in row:
                    row[key.replace("_us", "_tbps")] = round(nbytes / row[key] / 1e6, 3)
            row["all_us"] = tiles
            res["rows"].append(row)
            print({k: v for k, v in row.items() if k != "all_us"}, flush=True)
            with open(out, "w") as f:
                json.dump(res, f, indent=1)
            del copies, w


if __name__ == "__main__":
    main()
