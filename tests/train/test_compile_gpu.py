"""torch.compile of the decoder layers (train.distributed.apply_compile) on packed, document-masked batches: no graph
breaks with the varlen, flex or cudnn backend (the last on rows of one document each), and the same loss and
gradients as the eager model (GPU only)."""

import copy

import pytest
import torch

from smollm3 import build_model, preset
from smollm3.ops.attention import _varlen_impl, cudnn_attention_runs
from smollm3.ops.settings import OpSettings
from smollm3.train import distributed as D


def _packed_batch(vocab: int, device, whole_rows: bool = False):
    """Two rows of 256 tokens: three documents (100, 156, 256), or one a row (`whole_rows`: the cudnn backend)."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (2, 256), generator=g).to(device)
    docs = (256, 256) if whole_rows else (100, 156, 256)
    pos = torch.cat([torch.arange(n) for n in docs]).view(2, 256).to(device)
    return ids, pos, torch.roll(ids, -1, 1)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("backend", ["varlen", "flex", "cudnn"])
@pytest.mark.parametrize("checkpointing", [False, True, "selective", "selective-matmuls"])
def test_compiled_layers_match_eager_without_graph_breaks(backend, checkpointing):
    if backend == "varlen" and _varlen_impl() is None:
        pytest.skip("no varlen kernel in this torch")
    if backend == "cudnn" and not cudnn_attention_runs(torch.device("cuda")):
        pytest.skip("no cuDNN attention on this GPU or build")
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    eager = build_model(preset("tiny"), device="cuda", dtype=torch.float32,
                        settings=OpSettings(attn_backend=backend))
    compiled = copy.deepcopy(eager)
    if checkpointing:
        D.apply_activation_checkpointing(compiled, keep_attention=checkpointing in ("selective", "selective-matmuls"),
                                         keep_matmuls_layers=2 if checkpointing == "selective-matmuls" else 0)
    torch._dynamo.reset()
    counters.clear()
    D.apply_compile(compiled)
    ids, pos, labels = _packed_batch(eager.config.vocab_size, "cuda", whole_rows=backend == "cudnn")
    losses = []
    for model in (eager, compiled):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(ids, pos, labels=labels).mean()
        loss.backward()
        losses.append(loss.item())
    assert sum(counters["graph_break"].values()) == 0
    assert losses[1] == pytest.approx(losses[0], rel=1e-2)
    ge = torch.cat([p.grad.flatten() for p in eager.parameters()])
    gc = torch.cat([p.grad.flatten() for p in compiled.parameters()])
    assert torch.nn.functional.cosine_similarity(ge, gc, dim=0) > 0.99
