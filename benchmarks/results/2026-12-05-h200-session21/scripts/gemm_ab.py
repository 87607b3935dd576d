"""The fixed-tiling GEMM (ops/invariant_gemm.py) against cuBLAS (F.linear) at the 3B's prompt-step shapes, bf16."""
import torch, torch.nn.functional as F
from triton.testing import do_bench
from smollm3.ops import invariant_gemm as ig
for m in (64, 256, 512, 2048):
    row = []
    tot_c = tot_i = 0.0
    for n, k in ((3072, 2048), (2048, 2048), (22016, 2048), (2048, 11008)):
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k ** 0.5
        c = do_bench(lambda: F.linear(x, w), warmup=10, rep=50, return_mode="median")
        i = do_bench(lambda: ig.launch(x, w), warmup=10, rep=50, return_mode="median")
        tot_c += c; tot_i += i
        row.append(f"{n}x{k}: {c * 1e3:.0f}/{i * 1e3:.0f}us")
    fl = 2 * m * (3072 * 2048 + 2048 * 2048 + 22016 * 2048 + 2048 * 11008)
    print(f"M={m}: layer cuBLAS {tot_c * 1e3:.0f} us ({fl / tot_c / 1e9:.0f} TFLOP/s), fixed {tot_i * 1e3:.0f} us "
          f"({fl / tot_i / 1e9:.0f} TFLOP/s), ratio {tot_i / tot_c:.2f}; " + "  ".join(row), flush=True)
