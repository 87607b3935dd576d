"""Runs the model for the engine on the paged KV cache: decode steps through the fused step (fast.py) as CUDA
graphs, prompt steps through the same fused layers (fast_prefill.py; CUDA graphs between the attentions up to
PREFILL_GRAPH_TOKENS), or both through the model's forward where the fused step is off.

Decode inputs live in static buffers (tokens, lengths, block tables, one row per running request, rows in the
scheduler's order) because CUDA graphs read and write those exact tensors. A decode step is captured once per
(batch bucket, KV-length bucket) and replayed. Rows past the real batch inside a bucket point at a scratch block
that no request owns, so what they write is never read.
"""

from __future__ import annotations

import torch

from smollm3.infer.cache import PagedCache
from smollm3.infer.fast import FastDecode
from smollm3.infer.fast_prefill import FastPrefill
from smollm3.infer.sequence import Request
from smollm3.model import SmolLM3ForCausalLM
from smollm3.ops import invariant_gemm
from smollm3.ops.prefill_attention import to_device

# prompt steps up to this many (padded) tokens replay CUDA graphs (fast_prefill.py), as vLLM captures steps up to
# 512 tokens: past it a step's GPU work hides its launches
PREFILL_GRAPH_TOKENS = 512


class ModelRunner:
    def __init__(self, model: SmolLM3ForCausalLM, num_blocks: int, block_size: int, max_num_seqs: int,
                 max_model_len: int, max_num_batched_tokens: int = 2048, cuda_graphs: bool | None = None,
                 fast_decode: bool | None = None, gemv: bool | None = None, decode_kernels: bool | None = None,
                 pad_prefill: bool | None = None, prefill_kernel: bool | None = None, invariant_prefill: bool = False):
        cfg = model.config
        self.model, self.config = model, cfg
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.block_size, self.max_model_len = block_size, max_model_len
        self.max_num_batched_tokens = max_num_batched_tokens
        # prefill shapes from a few sizes, each run once at start (warm_up): cuBLAS picks its kernel by shape and
        # CUDA loads each kernel on first use. On an H100 a fresh engine's slowest prefill steps went from 219 to
        # 166 ms with it, their mean 3% lower (benchmarks/results/2026-12-05-h100-session16)
        self.pad_prefill = self.device.type == "cuda" if pad_prefill is None else bool(pad_prefill)
        # one block more than the pool: the scratch block of padded decode rows
        self.cache = PagedCache(cfg, num_blocks + 1, block_size, self.device, self.dtype, prefill_kernel)
        self.scratch = num_blocks
        self.max_blocks = -(-max_model_len // block_size)
        n = max_num_seqs
        self.tokens_buf = torch.zeros(n, dtype=torch.long, device=self.device)
        self.lengths_buf = torch.zeros(n, dtype=torch.long, device=self.device)
        self.tables_buf = torch.full((n, self.max_blocks), self.scratch, dtype=torch.int32, device=self.device)
        # what tables_buf holds, kept on the host and updated by each row's new blocks only: rebuilding every row
        # from the requests' lists took 15 ms a step at 256 requests x 1,024 blocks (64k context), nearly every step
        self.host_tables = torch.full((n, self.max_blocks), self.scratch, dtype=torch.int32)
        self._held: list[tuple] = [(None, 0, 0)] * n  # per row: (request, its preemption count, blocks written)
        self._copied: tuple | None = None  # (rows, blocks) of the last copy to the device
        self.logits_buf = torch.zeros(n, cfg.vocab_size, dtype=self.dtype, device=self.device)
        self.greedy_buf = torch.zeros(n, dtype=torch.long, device=self.device)  # argmax of logits_buf
        self.use_graphs = self.device.type == "cuda" if cuda_graphs is None else bool(cuda_graphs)
        if self.use_graphs and self.device.type != "cuda":
            raise ValueError("cuda_graphs=True needs the model on a CUDA device")
        self.bucket_shapes = self.use_graphs  # pad decode to (batch, KV-length) buckets: one graph per bucket
        self._graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}
        self._graph_pool = None
        self.fast = self.fast_prefill = None
        self._sampled = 0  # the begun prompt step's chunks that sample (begin_prefill)
        if fast_decode if fast_decode is not None else self.use_graphs:
            self.fast = FastDecode(model, self.cache, compile=self.device.type == "cuda", gemv=gemv,
                                   kernels=decode_kernels)
            self.fast_prefill = FastPrefill(self.fast, self.prefill_tokens(max_num_batched_tokens), invariant_prefill)
        if invariant_prefill and not (self.fast_prefill is not None and self.cache.prefill_kernel
                                      and invariant_gemm.available(self.device)):
            raise ValueError("invariant_prefill (--invariant-prefill) needs a CUDA device with Triton, the fused step "
                             "(fast_decode) and the prefill attention kernel (prefill_kernel): leave it off here")

    # ---- prefill

    def prefill_tokens(self, n: int) -> int:
        """The packed length a prefill of n tokens runs at: with padding, n rounded up to an eighth of its power of
        two (64 at least), so at most 1/8 more tokens and a few sizes per doubling."""
        if not self.pad_prefill:
            return n
        step = max(64, 1 << max(0, n.bit_length() - 4))
        return -(-n // step) * step

    def prefill_rows(self, k: int) -> int:
        """The rows the LM head runs on in a prefill that samples k requests: a power of two with padding."""
        return 1 << (k - 1).bit_length() if self.pad_prefill else k

    @torch.no_grad()
    def prefill(self, chunks: list[tuple[Request, int]]) -> torch.Tensor:
        """Compute K/V for each request's next n tokens (packed into one row), -> the logits [k, V] at the last
        token of each chunk that reaches the end of its request's tokens (those sample next), in chunk order.
        Padding tokens (pad_prefill) write only the scratch block and attend to nothing."""
        return self._prefill(*self._pack(chunks))

    @torch.no_grad()
    def begin_prefill(self, chunks: list[tuple[Request, int]]):
        """Start the prompt step `prefill(chunks)` runs, to run its layers a few at a time (`resume_prefill`),
        with decode steps launched in between (they read and write other buffers and blocks). Needs the fused step."""
        if self.fast_prefill is None:
            raise ValueError("a prompt step run a few layers at a time needs the fused step (fast_decode)")
        ids, plan, last = self._pack(chunks)
        x, positions, rows = self._prefill_inputs(ids, plan, last)
        self.fast_prefill.begin(x[0], positions[0], rows)
        self._sampled = len(last)

    @torch.no_grad()
    def resume_prefill(self, layers: int) -> torch.Tensor | None:
        """The begun prompt step's next `layers` layers -> None while layers remain, then prefill's logits."""
        logits = self.fast_prefill.resume(layers)
        return None if logits is None else logits[:self._sampled]

    def _pack(self, chunks: list[tuple[Request, int]]) -> tuple[list[int], list[tuple[list[int], int, int]], list[int]]:
        ids, plan, last = [], [], []
        for r, n in chunks:
            start = r.num_computed
            ids += r.tokens(start, start + n)
            plan.append((r.block_table, start, n))
            if start + n == r.num_tokens:
                last.append(len(ids) - 1)
        return ids, plan, last

    def _prefill_inputs(self, ids: list[int], plan: list[tuple[list[int], int, int]], last: list[int]):
        """Plan the cache's prompt step -> (packed ids [1, N], positions [1, N], rows to sample at), padded."""
        pad = self.prefill_tokens(len(ids)) - len(ids)
        self.cache.plan_prefill(plan, self.device, pad=pad, pad_block=self.scratch)
        x = to_device(torch.tensor([ids + [0] * pad]), self.device)
        positions = self.cache.position_ids(1, x.shape[1], self.device)
        rows = last + last[-1:] * (self.prefill_rows(len(last)) - len(last))  # none: no chunk samples this step
        return x, positions, to_device(torch.tensor(rows, dtype=torch.long), self.device)

    def _prefill(self, ids: list[int], plan: list[tuple[list[int], int, int]], last: list[int]) -> torch.Tensor:
        x, positions, rows = self._prefill_inputs(ids, plan, last)
        if self.fast_prefill is not None:  # the decode step's fused projections and compiled layer functions
            return self.fast_prefill(x[0], positions[0], rows)[:len(last)]
        hidden = self.model.model(x, positions, self.cache)
        if not last:
            return hidden.new_empty(0, self.config.vocab_size)
        return self.model.lm_head(hidden[0, rows])[:len(last)]

    def prefill_sizes(self) -> list[int]:
        """Every packed length a padded prefill runs at, largest first (none without padding)."""
        if not self.pad_prefill:
            return []
        return sorted({self.prefill_tokens(n) for n in range(1, self.max_num_batched_tokens + 1)}, reverse=True)

    @torch.no_grad()
    def warm_prefill(self) -> int:
        """Run every shape a prompt step can take once, now, on the scratch block only, so that no request's step
        compiles a function or loads a kernel: a prefill of every padded length (then, with graphs, its capture up
        to PREFILL_GRAPH_TOKENS); one sampling every padded row count (the LM head, fused where `fast`); where a
        prompt can reach past the attention kernel's first key split, a token just past it (the split and merge
        kernels). Before the last two were run here, a fresh H100 engine's first step deep in a 32k prompt took
        589 ms and the next ones ~30 (benchmarks/results/2026-12-05-h100-session20). -> the number of lengths run."""
        sizes = self.prefill_sizes()

        def run(n):
            self._prefill([0] * n, [([self.scratch] * -(-n // self.block_size), 0, n)], [n - 1])

        for n in sizes:
            run(n)
        if not sizes:
            return 0
        if self.use_graphs and self.fast_prefill is not None:  # every length compiled above: now capture
            for n in (n for n in sizes if n <= PREFILL_GRAPH_TOKENS):  # largest first, as the decode graphs
                self._graph_pool = self.fast_prefill.capture(n, self._graph_pool)
                run(n)
        for k in sorted({self.prefill_rows(k) for k in range(1, len(self.tokens_buf) + 1)}):
            self._prefill([0] * k, [([self.scratch], 0, 1)] * k, list(range(k)))  # k one-token chunks, each sampled
        deep = self.cache.split_keys
        if self.cache.prefill_kernel and self.max_model_len > deep:
            # a block table 16 blocks wide: Triton compiles the kernel apart for a table stride that is a multiple of
            # 16 (the lengths above give strides 1 and others)
            self._prefill([0], [([self.scratch] * -(-(deep // self.block_size + 1) // 16) * 16, deep, 1)], [0])
        return len(sizes)

    # ---- decode

    def shape(self, reqs: list[Request]) -> tuple[int, int]:
        """(rows, KV positions read) of a decode step, rounded up to buckets where graphs are used."""
        b = len(reqs)
        if self.bucket_shapes:
            b = next(s for s in _buckets(len(self.tokens_buf)) if s >= b)
        return b, self._kv_positions(max(r.num_computed for r in reqs) + 1)

    def _kv_positions(self, kv_len: int) -> int:
        """The KV positions a step whose longest row holds kv_len reads: whole blocks, and with graphs a power of
        two from 256 up (one graph per bucket)."""
        if self.bucket_shapes:
            kv_len = max(256, 1 << (kv_len - 1).bit_length())
        return min(-(-kv_len // self.block_size), self.max_blocks) * self.block_size

    def decode_shapes(self) -> list[tuple[int, int]]:
        """Every (rows, KV positions) that `shape` can return, largest first: the CUDA graphs a server captures at
        start."""
        if not self.bucket_shapes:
            return []
        kvs = {self._kv_positions(1 << p) for p in range(self.max_model_len.bit_length() + 1)}
        return [(b, k) for b in reversed(_buckets(len(self.tokens_buf))) for k in sorted(kvs, reverse=True)]

    def capture_graphs(self) -> int:
        """Compile and capture the decode step of every shape now, before any request runs, so that no request
        waits for it (vLLM does the same at start). The largest first: the graphs share one memory pool, which the
        largest sizes. -> the number of graphs captured."""
        shapes = [s for s in self.decode_shapes() if s not in self._graphs]
        for b, kv_len in shapes:
            self._graph(b, kv_len)
        return len(shapes)

    def upload(self, reqs: list[Request], b: int, kv_len: int, tokens: bool = True) -> bool:
        """Rows 0..len(reqs)-1: each request's block table, and unless `tokens` is False (the device already holds
        them) its last token and position; rows up to b: padding (length 0, the scratch block). A row is rewritten
        on the host only past the blocks it already holds for the same request (all of it after a preemption or
        for another request), and the tables go to the device only when a row changed or the shape did, without
        waiting for the device: a launched step keeps running. -> whether the tables were copied."""
        n, nb = len(reqs), kv_len // self.block_size
        host = self.host_tables.numpy()
        changed = self._copied != (b, nb)
        for i in range(b):
            r = reqs[i] if i < n else None
            table = r.block_table if r is not None else []
            epoch = r.num_preemptions if r is not None else 0
            held, held_epoch, written = self._held[i]
            same = held is r and held_epoch == epoch and written <= len(table)
            start = written if same else 0
            if start < len(table):
                host[i, start:len(table)] = table[start:]
                changed = True
            if not same and written > len(table):  # the previous occupant's blocks: padding reads the scratch block
                host[i, len(table):written] = self.scratch
                changed = True
            self._held[i] = (r, epoch, len(table))
        if changed:
            staged = self.host_tables[:b, :nb]
            if self.device.type == "cuda":  # pinned by torch's caching host allocator, kept until the copy is done
                staged = staged.pin_memory()
            self.tables_buf[:b, :nb].copy_(staged, non_blocking=True)
            self._copied = (b, nb)
        if tokens:
            pad = [0] * (b - n)
            staged = torch.tensor([[r.output_ids[-1] for r in reqs] + pad, [r.num_computed for r in reqs] + pad])
            if self.device.type == "cuda":  # as the tables: one pinned buffer, copied straight into the buffers
                staged = staged.pin_memory()
            self.tokens_buf[:b].copy_(staged[0], non_blocking=True)
            self.lengths_buf[:b].copy_(staged[1], non_blocking=True)
        return changed

    def launch(self, b: int, kv_len: int):
        """One decode step over rows 0..b-1 (after upload): logits_buf, greedy_buf; with the fused step, tokens_buf
        and lengths_buf advance in place for the next step (pipelined greedy decode)."""
        if self.use_graphs:
            self._graph(b, kv_len).replay()
        else:
            self._decode_forward(b, kv_len)

    @torch.no_grad()
    def _decode_forward(self, b: int, kv_len: int):
        """Everything a decode step runs on the device, reading and writing only the static buffers."""
        tokens, lengths, tables = self.tokens_buf[:b], self.lengths_buf[:b], self.tables_buf[:b, :kv_len // self.block_size]
        if self.fast is not None:
            logits, greedy = self.fast.run(tokens, lengths, tables, kv_len)
            self.logits_buf[:b] = logits
            self.greedy_buf[:b] = greedy
            # the next step's inputs, for pipelined decode: this step's argmax, one more cached token per used row
            # (padding rows have length 0 and stay there; other paths upload both buffers before each step)
            self.tokens_buf[:b] = greedy
            self.lengths_buf[:b] += (lengths > 0).long()
            return
        self.cache.plan_decode(lengths, tables)
        hidden = self.model.model(tokens[:, None], lengths[:, None], self.cache)
        self.logits_buf[:b] = self.model.lm_head(hidden[:, -1])

    def _graph(self, b: int, kv_len: int) -> torch.cuda.CUDAGraph:
        g = self._graphs.get((b, kv_len))
        if g is None:
            # warm up on a side stream (allocator and cuBLAS workspaces, Triton tuning), then capture. Re-running
            # the step is harmless: it rewrites the same K/V at the same positions from the same inputs; the inputs
            # it advances in place for the next step (tokens, lengths) are put back before the capture.
            inputs = self.tokens_buf[:b].clone(), self.lengths_buf[:b].clone()
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                self._decode_forward(b, kv_len)
            torch.cuda.current_stream().wait_stream(stream)
            self.tokens_buf[:b].copy_(inputs[0])
            self.lengths_buf[:b].copy_(inputs[1])
            g = torch.cuda.CUDAGraph()
            # thread_local: the server's threads may touch CUDA state (e.g. seeding a generator) meanwhile
            with torch.cuda.graph(g, pool=self._graph_pool, capture_error_mode="thread_local"):
                self._decode_forward(b, kv_len)
            self._graph_pool = g.pool()  # one memory pool for all graphs: they never run at the same time
            self._graphs[(b, kv_len)] = g
        return g


def _buckets(n: int) -> list[int]:
    """Decode batch sizes with their own CUDA graph: powers of two, then n itself."""
    out, b = [], 1
    while b < n:
        out.append(b)
        b *= 2
    return out + [n]
