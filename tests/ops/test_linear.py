"""ops/linear.py's index_add_in_order: index_add_'s sums, in one order on every run."""

import pytest
import torch

from smollm3.ops.linear import index_add_in_order


def rows(device):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 50, (4096,), generator=g)  # ~80 rows per id: the order of their adds matters
    return ids.to(device), torch.randn(4096, 64, generator=g).to(device)


def test_cpu_sums_are_index_adds_bit_for_bit():
    ids, src = rows("cpu")
    dest = torch.randn(50, 64)
    assert torch.equal(index_add_in_order(dest.clone(), ids, src), dest.clone().index_add_(0, ids, src))
    seg = torch.tensor([0, 2, 2, 1, 0])  # 1-D, as the preference losses' per-sequence sums
    vals = torch.randn(5)
    assert torch.equal(index_add_in_order(torch.zeros(3), seg, vals), torch.zeros(3).index_add_(0, seg, vals))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_sums_repeat_bit_for_bit():
    ids, src = rows("cuda")
    runs = [index_add_in_order(torch.zeros(50, 64, device="cuda"), ids, src) for _ in range(5)]
    assert all(torch.equal(r, runs[0]) for r in runs)
    exact = torch.zeros(50, 64, dtype=torch.float64).index_add_(0, ids.cpu(), src.cpu().double())
    torch.testing.assert_close(runs[0].cpu().double(), exact, rtol=1e-5, atol=1e-5)
