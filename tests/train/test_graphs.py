"""train.cuda_graphs (train/graphs.py): the static layout on the CPU; on the GPU, graphed micro-batches give the
eager path's gradients through every capture, replay and release (the trainer's losses: tests/train/test_trainer.py)."""

import copy

import pytest
import torch

from smollm3 import build_model, preset
from smollm3.data.packing import IGNORE_INDEX
from smollm3.train.graphs import LABEL_ROWS, MicroBatchGraphs, static_layout
from smollm3.train.precision import GradAccumFusion


def _batch(docs: list[int], vocab: int, seed: int, ignored_tail: int = 0) -> dict:
    """One row packed with documents of these lengths; each document's last label is ignored, as pretraining's."""
    g = torch.Generator().manual_seed(seed)
    T = sum(docs)
    ids = torch.randint(0, vocab, (1, T), generator=g)
    pos = torch.cat([torch.arange(n) for n in docs]).view(1, T)
    labels = torch.roll(ids, -1, 1)
    labels[0, torch.cumsum(torch.tensor(docs), 0) - 1] = IGNORE_INDEX
    if ignored_tail:
        labels[0, -ignored_tail:] = IGNORE_INDEX
    return {"input_ids": ids, "position_ids": pos, "labels": labels}


def test_static_layout_pads_the_counted_positions_with_ignored_ones():
    batch = _batch([300, 200, 12, 500], vocab=100, seed=0, ignored_tail=40)  # 1,012 tokens, 43 ignored
    out, whole_rows = static_layout(batch)
    assert not whole_rows
    flat = batch["labels"].reshape(-1)
    counted = (flat != IGNORE_INDEX).nonzero().squeeze(1)
    index = out["label_index"]
    assert index.numel() == 1012  # 969 counted -> 1,024 rows, capped at the 1,012 positions
    assert torch.equal(index[:counted.numel()], counted)
    assert (flat[index[counted.numel():]] == IGNORE_INDEX).all() and index.unique().numel() == index.numel()
    assert out["cu_seqlens"].tolist() == [0, 300, 500, 512, 1012, 1012, 1012, 1012]
    short, _ = static_layout(_batch([100, 100], vocab=100, seed=0))  # 198 counted -> 256, capped at 200 positions
    assert short["label_index"].numel() == 200
    long, _ = static_layout(_batch([700, 324, 1000], vocab=100, seed=0))  # 2,021 counted -> 2,048, capped at 2,024
    assert long["label_index"].numel() == 2024
    mid, _ = static_layout(_batch([600] * 3, vocab=100, seed=0, ignored_tail=300))  # 1,498 counted -> 1,536
    assert mid["label_index"].numel() == 6 * LABEL_ROWS


def test_a_whole_row_document_and_two_packed_ones_are_different_graphs():
    """Both pad their document offsets to 4, but one document a row runs plain causal attention (the cudnn backend)
    and two need the document mask: a graph captured for one must never replay the other."""
    one, whole = static_layout(_batch([128], vocab=100, seed=0))
    two, packed = static_layout(_batch([64, 64], vocab=100, seed=0))
    assert {k: v.shape for k, v in one.items()} == {k: v.shape for k, v in two.items()}
    assert whole and not packed


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_graphed_micro_batches_give_the_eager_gradients():
    torch.manual_seed(0)
    eager = build_model(preset("tiny"), device="cuda", dtype=torch.float32)
    graphed = copy.deepcopy(eager)
    fusions = [GradAccumFusion(m, torch.bfloat16) for m in (eager, graphed)]
    graphs = MicroBatchGraphs(graphed, torch.bfloat16, torch.device("cuda"))
    vocab = eager.config.vocab_size
    # 128 tokens in 2, 6 and 10 documents: document offsets padded to 4, 8 and 16, three keys A, B, C
    layouts = [[64, 64], [20, 20, 20, 20, 20, 28], [12] * 9 + [20]]
    # A eager, A captured, B eager (frees A's graph), A and B captured, C eager (frees both), A and C captured; in the
    # second step B is captured again and everything else replays
    order = [0, 0, 1, 0, 1, 1, 2, 0, 2]
    for step in range(2):
        for f in fusions:
            f.begin_step()
        scale = 1 / (300 + step)
        graphs.set_loss_scale(scale)
        for i, which in enumerate(order):
            batch = _batch(layouts[which], vocab, seed=10 * step + i)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = eager(batch["input_ids"].cuda(), batch["position_ids"].cuda(),
                             labels=batch["labels"].cuda()).sum()
            (loss * scale).backward()
            replayed = graphs(batch)
            assert replayed.item() == pytest.approx(loss.item(), rel=1e-3)
        for f in fusions:
            f.end_step()
        for (name, a), b in zip(eager.named_parameters(), graphed.parameters()):
            rel = ((a.grad - b.grad).norm() / a.grad.norm()).item()
            assert rel < 2e-3, (step, name, rel)
        for m in (eager, graphed):
            for p in m.parameters():
                p.grad.zero_()
    assert graphs.eager == 3 and graphs.captures == 2 + 1 + 2 + 1 and graphs.replays == 2 * len(order) - 3
