"""The fixed-tiling GEMM (ops/invariant_gemm.py): each output row is the same bits computed alone or inside any
larger product (row counts below, at and past one tile, a K that is not a multiple of the K block), and within
rounding of F.linear. Through Triton's CPU interpreter in fp16 where Triton is installed, and on the GPU in bf16
at the 3B's projection shapes."""

import json
import os
import subprocess
import sys

import pytest
import torch

from smollm3.ops import invariant_gemm

try:
    import triton  # noqa: F401
except ImportError:
    triton = None


def rows_alone_and_together(device: str, dtype: torch.dtype, n: int, k: int, m: int) -> dict:
    """-> {"same": every row slice's product equals those rows of the whole product bit for bit, "err": the
    whole product's relative error against F.linear}."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(m, k, generator=g).to(device, dtype)
    w = (torch.randn(n, k, generator=g) / k ** 0.5).to(device, dtype)
    whole = invariant_gemm.launch(x, w)
    same = all(torch.equal(invariant_gemm.launch(x[a:b].contiguous(), w), whole[a:b])
               for a, b in ((0, 1), (5, 70), (130, m), (m - 1, m)))
    ref = invariant_gemm.reference(x.float(), w.float())
    return {"same": same, "err": ((whole.float() - ref).norm() / ref.norm()).item()}


@pytest.mark.skipif(triton is None, reason="needs Triton (its CPU interpreter runs the kernel without a GPU)")
def test_rows_are_the_same_bits_in_any_product_in_interpreter():
    # the interpreter is chosen when the kernel is defined, so it runs in its own process
    code = ("import json, runpy, torch; m = runpy.run_path(%r); "
            "print(json.dumps(m['rows_alone_and_together']('cpu', torch.float16, 200, 200, 300)))" % __file__)
    env = dict(os.environ, TRITON_INTERPRET="1")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["same"] and out["err"] < 2e-3, out


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_rows_are_the_same_bits_in_any_product_on_gpu():
    for n, k in ((3072, 2048), (2048, 2048), (22016, 2048), (2048, 11008), (1000, 200)):
        out = rows_alone_and_together("cuda", torch.bfloat16, n, k, 700)
        assert out["same"] and out["err"] < 1e-2, (n, k, out)
    x = torch.randn(64, 2048, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(512, 2048, device="cuda", dtype=torch.bfloat16)
    compiled = torch.compile(lambda a, b: torch.ops.smollm3.invariant_linear(a, b) * 2, fullgraph=True)
    assert torch.equal(compiled(x, w), invariant_gemm.launch(x, w) * 2)


def test_refused_off_cuda():
    with pytest.raises(RuntimeError, match="needs Triton and a CUDA device"):
        torch.ops.smollm3.invariant_linear(torch.zeros(2, 4), torch.zeros(3, 4))
