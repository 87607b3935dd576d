"""The engine's prompt step on the decode step's fused layers (fast.py): a step's packed prompt chunks through the
same compiled functions, cut into pieces at the attention, each piece replayed as a CUDA graph for small steps.

Why pieces: a step's attention depends on what the step holds (its chunks and their depths decide the prefill
kernel's grid, planned on the host), the rest only on the step's padded length. So the work between two attentions
(layer i-1's o_proj and MLP, then layer i's norm, q/k/v projection and RoPE) is captured once per padded length and
replayed, and the attention runs between the pieces as the cache planned it: vLLM's piecewise CUDA graphs, for the
same reason. A 36-layer step is then 37 replays and 36 attention calls. Launched op by op through the compiled
functions, a step deep in a 32k prompt cost ~10 ms of host time on an H100 beyond its GPU time, with 64 streams
waiting on it (benchmarks/results/2026-12-05-h100-session20).

The pieces read and write static buffers (tokens, positions, RoPE's cos/sin, the residual stream, q/k/v, the
attention's output), so that a replay finds its inputs where the capture saw them. Steps with and without graphs
run the same pieces and give the same bits. Steps longer than the largest captured length run the pieces eagerly:
their GPU work hides their launches.

`invariant=True`: a token's K/V and logits are the same bits whatever else its step holds, so a prompt gives the
same bits read whole, in chunks, or after a prefix served from the cache. The projections and the LM head run as
ops/invariant_gemm.py's fixed-tiling GEMM instead of cuBLAS (which picks its kernel by the step's size), every
compiled function is compiled for any row count from its first call (one kernel, one reduction order, for every
length), and the head runs at two rows at least (one row would get a kernel of its own). The prefill attention
kernel is invariant already (its key splits sit at fixed positions).
"""

from __future__ import annotations

import torch

from smollm3.infer.fast import FastDecode


class FastPrefill:
    """`FastPrefill(fast, max_tokens)(ids, positions, rows)` -> logits at `rows`, after the cache's plan_prefill;
    `capture(n, pool)` makes n-token steps replay CUDA graphs."""

    def __init__(self, fast: FastDecode, max_tokens: int, invariant: bool = False):
        cfg = fast.model.config
        w = fast.model.model.embed_tokens.weight
        H, KV, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.fast, self.layers, self.max_tokens, self.invariant = fast, len(fast.weights), max_tokens, invariant

        def buf(*shape, dtype=w.dtype):
            return torch.zeros(max_tokens, *shape, dtype=dtype, device=w.device)

        self.ids, self.positions = buf(dtype=torch.long), buf(dtype=torch.long)
        self.cos, self.sin = buf(D), buf(D)
        self.x, self.delta = buf(cfg.hidden_size), buf(cfg.hidden_size)
        self.q, self.k, self.v, self.attn = buf(H, D), buf(KV, D), buf(KV, D), buf(H * D)
        self.graphs: dict[int, list[torch.cuda.CUDAGraph]] = {}
        self._step = None  # a begun step: (tokens, rows, layers done)

    def __call__(self, ids: torch.Tensor, positions: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """ids, positions [N] (the step's packed chunks, padded); rows: the packed tokens to sample at ->
        logits [len(rows), V]."""
        self.begin(ids, positions, rows)
        return self.resume(self.layers)

    def begin(self, ids: torch.Tensor, positions: torch.Tensor, rows: torch.Tensor):
        """Start a step (as __call__) whose layers `resume` runs, a few at a time. Between two resumes other work
        may run on the device (decode steps), as long as it leaves this object's buffers and the cache's prefill
        plan alone: the step's result is the same bits however it is divided."""
        n = ids.shape[0]
        if n > self.max_tokens:
            raise ValueError(f"a prompt step of {n} tokens: this runner was built for {self.max_tokens} at most")
        self.ids[:n].copy_(ids)
        self.positions[:n].copy_(positions)
        self._step = (n, rows, 0)

    def resume(self, layers: int) -> torch.Tensor | None:
        """Run the begun step's next `layers` layers (the last piece, the final o_proj and MLP, rides with the last
        layer) -> None while layers remain, else the logits at its rows [len(rows), V]."""
        n, rows, first = self._step
        end = min(first + max(1, layers), self.layers)
        graphs = self.graphs.get(n)
        for i in range(first, end + 1 if end == self.layers else end):
            if graphs is None:
                self._piece(i, n)
            else:
                graphs[i].replay()
            if i < self.layers:
                self._attend(i, n)
        if end < self.layers:
            self._step = (n, rows, end)
            return None
        self._step = None
        f, k = self.fast, len(rows)
        if not k:  # no chunk samples this step: the layers wrote its K/V, which is all it needed
            return self.x.new_empty(0, f.model.config.vocab_size)
        if self.invariant and k == 1:
            rows = rows.repeat(2)
        x, delta = self._rows_dynamic(self.x[rows], self.delta[rows])
        return f.head_fn(x, delta, f.model.model.norm.weight, f.model.lm_head.weight, f.eps,
                         invariant=self.invariant)[0][:k]

    def capture(self, n: int, pool=None):
        """Capture the pieces of an n-token step, once an eager n-token step has compiled them, into `pool` (the
        decode graphs' pool: no two graphs run at once). -> the pool."""
        stream = torch.cuda.Stream()  # a warm run off the default stream first, as for the decode graphs
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for i in range(self.layers + 1):  # reads and writes the buffers only: the next step rewrites them
                self._piece(i, n)
        torch.cuda.current_stream().wait_stream(stream)
        graphs = []
        for i in range(self.layers + 1):
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g, pool=pool, capture_error_mode="thread_local"):
                self._piece(i, n)
            pool = g.pool()
            graphs.append(g)
        self.graphs[n] = graphs
        return pool

    def _piece(self, i: int, n: int):
        """Piece i over the buffers' first n rows: the embedding and RoPE's cos/sin (i = 0) or layer i-1's o_proj
        and MLP; then, but for the last piece, layer i's norm, q/k/v projection and RoPE."""
        f, model = self.fast, self.fast.model.model
        if i == 0:
            x = model.embed_tokens(self.ids[:n])
            delta = torch.zeros_like(x)  # x + 0 is exact: the first layer's deferred add changes nothing
            cos, sin = model.rotary_emb(self.positions[:n], x.dtype)
            self.cos[:n].copy_(cos)
            self.sin[:n].copy_(sin)
        else:
            _, _, w_o, ln2, w_gu, w_down = f.weights[i - 1]
            x, delta = f.post_fn(*self._rows_dynamic(self.x[:n], self.attn[:n]), w_o, ln2, w_gu, w_down, eps=f.eps,
                                 invariant=self.invariant)
        if i == self.layers:  # the last MLP's output is for the head to add
            self.x[:n].copy_(x)
            self.delta[:n].copy_(delta)
            return
        ln1, w_qkv = f.weights[i][:2]
        x, qkv = f.pre_fn(*self._rows_dynamic(x, delta), ln1, w_qkv, eps=f.eps, invariant=self.invariant)
        q, k, v = f.rope_fn(*self._rows_dynamic(qkv, self.cos[:n], self.sin[:n]), heads=f.heads["heads"],
                            kv_heads=f.heads["kv_heads"], use_rope=f.rope[i])
        self.x[:n].copy_(x)
        self.q[:n].copy_(q)
        self.k[:n].copy_(k)
        self.v[:n].copy_(v)

    def _rows_dynamic(self, *tensors):
        """Invariant steps: the tensors' row count is a variable to the compiler from the first call, so that every
        length runs one compiled kernel (dynamo would otherwise specialise on the first length it sees)."""
        if self.invariant and tensors[0].shape[0] > 1:
            for t in tensors:
                torch._dynamo.mark_dynamic(t, 0)
        return tensors

    def _attend(self, i: int, n: int):
        """Layer i's attention as the cache planned it: the new K/V written, then every chunk's queries."""
        q, k, v = (t[:n].transpose(0, 1)[None] for t in (self.q, self.k, self.v))  # the model's [1, heads, N, D]
        out = self.fast.cache.attend(i, q, k, v, self.fast.heads["scale"])
        self.attn[:n].copy_(out.reshape(n, -1))
