"""Whole micro-batches (forward, loss and backward) replayed as CUDA graphs: `train.cuda_graphs`.

A compiled micro-batch launches ~30 kernels a layer. For the small presets the host cannot launch them as fast as
the GPU runs them; for the 3B preset it keeps ahead, but the GPU still idles 1-2 us between dependent kernels (~2 ms
of a ~147 ms micro-batch). A graph replays them all from one launch. On the H100
(benchmarks/results/2026-11-25-h100-cuda-graphs.md): 3.7x the tokens/s on the 360M preset, 4.5x on the 135M, 1-2%
on the 3B.

A graph replays fixed addresses and shapes, so:
- the batch is copied into static input buffers before each replay. Shapes are made few: the document offsets are
  padded to a power of two already (attention.DocumentMask), the counted label positions are padded to whole
  blocks of LABEL_ROWS with positions whose label is ignored (they count nothing: losses.chunked_cross_entropy),
  and the flash kernels' longest document is the row length. Each distinct shape (a key) gets its own graph.
- the weight gradients must live in buffers that outlast the graph: the fused path's fp32 `.grad`
  (train/precision.py GradAccumFusion), zeroed in place between steps. The loss scale (world / the step's counted
  labels) is a device scalar set once a step.
- nothing may be compiled or tuned during capture: a key is run eagerly the first time it is seen, and captured the
  second time. An eager run needs the activation memory the graphs hold (~15 GiB for the 3B preset at 4,096
  tokens), so a key seen for the first time after capture frees every graph first; those are captured again the next
  time their key comes (a capture costs one micro-batch's host time and no GPU work).
All graphs share one memory pool: they never run at once, and each one's only live output is its loss.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass

import torch

from smollm3.ops.attention import DocumentMask
from smollm3.data.packing import IGNORE_INDEX

LABEL_ROWS = 256  # counted label positions are padded to a multiple of this: few shapes, <= 255 wasted head rows


def static_layout(batch: dict) -> tuple[dict[str, torch.Tensor], bool]:
    """The micro-batch's CPU tensors as a graph reads them: input_ids, position_ids, labels [B, T]; doc_ids [B, T];
    cu_seqlens (padded as DocumentMask pads it); label_index, the counted positions first, then ignored positions up
    to a multiple of LABEL_ROWS (or all B*T positions). And whether every row is one document (DocumentMask's
    whole_rows: it picks the attention kernel, so it is part of a graph's key)."""
    labels = batch["labels"]
    mask = DocumentMask.from_position_ids(batch["position_ids"])
    flat = labels.reshape(-1)
    counted = (flat != IGNORE_INDEX).nonzero().squeeze(1)
    rows = min(flat.numel(), -(-counted.numel() // LABEL_ROWS) * LABEL_ROWS)
    padding = (flat == IGNORE_INDEX).nonzero().squeeze(1)[:rows - counted.numel()]
    return {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], "labels": labels,
            "doc_ids": mask.doc_ids, "cu_seqlens": mask.cu_seqlens,
            "label_index": torch.cat([counted, padding])}, mask.whole_rows


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    inputs: dict[str, torch.Tensor]  # the static buffers it reads
    loss: torch.Tensor  # the static output it writes: the micro-batch's summed nll


class MicroBatchGraphs:
    """Runs a causal-LM micro-batch's forward and backward as a CUDA graph per batch shape (see the module doc).
    `loss_scale` multiplies the loss before backward: set it once a step (`set_loss_scale`). `__call__` returns the
    micro-batch's summed nll, valid until the next call (accumulate it at once)."""

    def __init__(self, model, dtype: torch.dtype, device: torch.device):
        self.model, self.dtype, self.device = model, dtype, device
        self.loss_scale = torch.ones((), device=device)
        self.graphs: dict[tuple, _Graph] = {}
        self.seen: set[tuple] = set()  # keys run eagerly once: compiled and tuned
        self.pool = None
        self.replays = self.captures = self.eager = 0

    def set_loss_scale(self, value: float):
        self.loss_scale.fill_(value)

    def __call__(self, batch: dict) -> torch.Tensor:
        cpu, whole_rows = static_layout(batch)
        key = (*((name, tuple(t.shape)) for name, t in cpu.items()), whole_rows)
        if key not in self.seen:
            self.release()  # the eager run needs the activation memory the graphs hold
            self.seen.add(key)
            self.eager += 1
            inputs = {name: t.pin_memory().to(self.device, non_blocking=True) for name, t in cpu.items()}
            return self._forward_backward(inputs, whole_rows).detach()
        if key not in self.graphs:
            self.graphs[key] = self._capture(cpu, whole_rows)
        g = self.graphs[key]
        for name, t in cpu.items():
            g.inputs[name].copy_(t.pin_memory(), non_blocking=True)
        g.graph.replay()
        self.replays += 1
        return g.loss

    def release(self):
        """Free every graph and its memory (they are captured again when their key next comes)."""
        if self.graphs:
            self.graphs.clear()
            self.pool = None
            gc.collect()
            torch.cuda.empty_cache()

    def _capture(self, cpu: dict, whole_rows: bool) -> _Graph:
        inputs = {name: torch.empty_like(t, device=self.device) for name, t in cpu.items()}
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):  # synchronizes and empties the allocator's cache first
            loss = self._forward_backward(inputs, whole_rows).detach()
        self.captures += 1
        return _Graph(graph, inputs, loss)

    def _forward_backward(self, inputs: dict, whole_rows: bool) -> torch.Tensor:
        T = inputs["input_ids"].shape[1]
        # the longest document is at most a row: a bound the flash kernels accept, and one that does not change
        doc = DocumentMask(doc_ids=inputs["doc_ids"], cu_seqlens=inputs["cu_seqlens"], max_seqlen=T,
                           whole_rows=whole_rows)
        # autocast's weight-cast cache would hold tensors of the graph's pool past the capture
        with torch.autocast(self.device.type, dtype=self.dtype, cache_enabled=False):
            loss = self.model(inputs["input_ids"], inputs["position_ids"], labels=inputs["labels"],
                              document_mask=doc, label_index=inputs["label_index"]).sum()
        loss.backward(self.loss_scale)
        return loss
