"""The prefill kernel alone, one layer of the 3B (16 heads, 4 kv heads, D 128, block 64): a chunk of N tokens at
depth S (keys 0..S+N), per SPLIT_KEYS value; and (trees with decode_rows) 64 one-token streams at depth 768 at
decode_rows rows a program. Run with each tree's src on PYTHONPATH: the same shapes, the kernel of that tree.
FLOPs from real pairs: each query sees its depth's keys and the chunk's causally."""
import inspect, os, sys, torch
from smollm3.ops import prefill_attention as pa

H, KV, D, BS = 16, 4, 128, 64
SMOKE = os.environ.get("TRITON_INTERPRET") == "1"  # a CPU check of the script itself: tiny shapes
dev = torch.device("cpu" if SMOKE else "cuda")
torch.manual_seed(0)
blocks = (4096 if SMOKE else 65536 + 4096) // BS + 8
kc = torch.randn(blocks, KV, BS, D, device=dev, dtype=torch.bfloat16)
vc = torch.randn_like(kc)
has_rows = "rows" in inspect.signature(pa.prefill_attention).parameters
print(f"tree: {pa.__file__}; rows argument: {has_rows}; SPLIT_KEYS {pa.SPLIT_KEYS}", flush=True)


def timed(fn, reps=50):
    if SMOKE:
        fn()
        return 1.0
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(reps):
        fn()
    b.record(); torch.cuda.synchronize()
    return a.elapsed_time(b) / reps * 1e3  # us


def case(chunks, q_tokens, rows=None, split=pa.SPLIT_KEYS):
    tokens = pa.tile_tokens(H, KV) if rows is None else pa.tile_tokens(H, KV, rows)
    tiles, merges, tables, slots = pa.plan(chunks, dev, tokens, split)
    q = torch.randn(q_tokens, H, D, device=dev, dtype=torch.bfloat16)
    kw = {"rows": rows} if rows is not None else {}
    return timed(lambda: pa.prefill_attention(q, kc, vc, tiles, merges, tables, slots, D ** -0.5, **kw))


table = list(range(blocks))
for n in ((16,) if SMOKE else (102, 256, 512)):
    for depth in ((1024,) if SMOKE else (4096, 16384, 28672, 61440)):
        pairs = n * depth + n * (n + 1) // 2
        row = []
        for split in ((512,) if SMOKE else (1024, 2048, 4096, 8192)):
            us = case([(table, depth, n)], n, split=split)
            row.append(f"split {split}: {us:7.1f} us {4 * pairs * D * H / us / 1e6:6.1f} TF/s")
        print(f"chunk {n:4d} depth {depth:6d} | " + " | ".join(row), flush=True)
streams = [(table[i * 13:(i * 13) + 13], 768, 1) for i in range(4 if SMOKE else 64)]
if has_rows:
    us = case(streams, len(streams), rows=pa.decode_rows(H, KV))
    print(f"64 streams at depth 768, decode_rows {pa.decode_rows(H, KV)}: {us:.1f} us "
          f"({64 * 769 * KV * D * 2 * 2 / us / 1e3:.0f} GB/s of K/V)", flush=True)
us = case(streams, len(streams))
print(f"64 streams at depth 768, ROWS {pa.ROWS}: {us:.1f} us", flush=True)

# launch settings of the kernel itself (s22's signature): BLOCK_N keys an iteration, warps, pipeline stages, at the
# deep chunks target 9 sees (rows ROWS: 32 tokens a tile)
if has_rows:
    def direct(chunks, q, split, block_n, warps, stages):
        tiles, merges, tables, slots = pa.plan(chunks, dev, pa.tile_tokens(H, KV), split)
        out = torch.empty_like(q)
        part = torch.empty(max(slots, 1), KV, pa.ROWS, D, dtype=torch.float32, device=dev)
        lse = torch.empty(max(slots, 1), KV, pa.ROWS, dtype=torch.float32, device=dev)

        def go():
            pa._prefill_kernel[(tiles.shape[0], KV)](
                q, kc, vc, out, part, lse, tiles, tables, q.stride(0), q.stride(1), out.stride(0), out.stride(1),
                tables.stride(0), kc.stride(0), kc.stride(1), kc.stride(2), D ** -0.5 * 1.4426950408889634, KV,
                G=H // KV, GP=4, D=D, BS=BS, ROWS=pa.ROWS, BLOCK_N=block_n, num_warps=warps, num_stages=stages)
            if merges.shape[0]:
                pa._merge_kernel[(merges.shape[0], KV)](part, lse, out, merges, out.stride(0), out.stride(1), KV,
                                                        G=H // KV, GP=4, D=D, ROWS=pa.ROWS, num_warps=8)
        return timed(go), out

    for n, depth in ((16, 1024),) if SMOKE else ((102, 28672), (256, 28672), (256, 8192)):
        ref, q = None, torch.randn(n, H, D, device=dev, dtype=torch.bfloat16)
        for split in ((512,) if SMOKE else (2048, 4096)):
            for block_n, warps, stages in ((64, 8, 2), (64, 8, 3), (64, 4, 2), (128, 8, 2), (128, 8, 3)):
                try:
                    us, out = direct([(table, depth, n)], q, split, block_n, warps, stages)
                except Exception as e:  # noqa: BLE001 (a setting the GPU cannot hold: out of shared memory)
                    print(f"chunk {n} depth {depth} split {split} BLOCK_N {block_n} warps {warps} stages {stages}: "
                          f"{type(e).__name__}", flush=True)
                    continue
                ref = out.float() if ref is None else ref
                err = ((out.float() - ref).norm() / ref.norm()).item()
                pairs = n * depth + n * (n + 1) // 2
                print(f"chunk {n} depth {depth} split {split} BLOCK_N {block_n} warps {warps} stages {stages}: "
                      f"{us:7.1f} us {4 * pairs * D * H / us / 1e6:6.1f} TF/s (rel. diff {err:.1e})", flush=True)
