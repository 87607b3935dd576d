"""The prefill kernel alone at launch settings (pending session 25, branch prefill-warps): one layer of the 3B (16
heads, 4 kv heads, D 128, block 64), a chunk of N tokens at depth S (keys 0..S+N), SPLIT_KEYS as shipped; CONFIG as
the branch ships it (8 warps, 4 from wide_grid programs) against 8 and 4 warps everywhere, TMA on, and pointer loads
at 8; the relative difference of each against the first column's output. FLOPs from real pairs. Run with the
tree's src on PYTHONPATH."""
import os
import torch
from smollm3.ops import prefill_attention as pa

H, KV, D, BS = 16, 4, 128, 64
SMOKE = os.environ.get("TRITON_INTERPRET") == "1"
dev = torch.device("cpu" if SMOKE else "cuda")
torch.manual_seed(0)
blocks = (4096 if SMOKE else 65536 + 4096) // BS + 8
kc = torch.randn(blocks, KV, BS, D, device=dev, dtype=torch.bfloat16)
vc = torch.randn_like(kc)
table = list(range(blocks))
print(f"tree: {pa.__file__}; SPLIT_KEYS {pa.SPLIT_KEYS}; CONFIG {pa.CONFIG}", flush=True)


def timed(fn, reps=30):
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
    b.record()
    torch.cuda.synchronize()
    return a.elapsed_time(b) / reps * 1e3  # us


CFGS = [dict(pa.CONFIG), dict(pa.CONFIG, wide_grid=1 << 30), dict(pa.CONFIG, wide_grid=1),
        dict(pa.CONFIG, TMA=False, wide_grid=1 << 30)]
NAMES = ["shipped", "8 warps", "4 warps", "pointer 8 warps"]
for n, depth in ((16, 1024),) if SMOKE else ((102, 4096), (102, 16384), (102, 28672), (256, 4096), (256, 16384),
                                             (256, 28672), (256, 61440), (512, 16384), (512, 28672), (2048, 4096),
                                             (2048, 28672), (2048, 61440)):
    tiles, merges, tables, slots = pa.plan([(table, depth, n)], dev, pa.tile_tokens(H, KV))
    q = torch.randn(n, H, D, device=dev, dtype=torch.bfloat16)
    pairs = n * depth + n * (n + 1) // 2
    ref, row = None, []
    for name, cfg in zip(NAMES, CFGS):
        try:
            out = pa.prefill_attention(q, kc, vc, tiles, merges, tables, slots, D ** -0.5, cfg)
            us = timed(lambda: pa.prefill_attention(q, kc, vc, tiles, merges, tables, slots, D ** -0.5, cfg))
        except Exception as e:  # noqa: BLE001 (a setting the GPU cannot hold)
            row.append(f"{name}: {type(e).__name__} {str(e)[:80]}")
            continue
        ref = out.float() if ref is None else ref
        err = ((out.float() - ref).norm() / ref.norm()).item()
        row.append(f"{name}: {us:7.1f} us "
                   f"{4 * pairs * D * H / us / 1e6:5.0f} TF/s d{err:.0e}")
    print(f"chunk {n:4d} depth {depth:6d} programs {tiles.shape[0] * KV:5d} | " + " | ".join(row), flush=True)

# small chunks deep in a long prompt (what the depth-weighted cap sends there: ~100 tokens at 28k under cap 256) are
# few programs (4 tiles x 8 splits x 4 kv heads = 128 on 132 SMs): tiles of 16 tokens (ROWS 64) or splits of 2,048
# keys double them. ROWS is read at call time, so setting it here changes plan's tiles and the kernel's rows
for n, depth in ((16, 1024),) if SMOKE else ((64, 28672), (102, 28672), (102, 61440), (256, 28672)):
    q = torch.randn(n, H, D, device=dev, dtype=torch.bfloat16)
    pairs = n * depth + n * (n + 1) // 2
    ref, row = None, []
    for rows in (128, 64):
        for split in (4096, 2048):
            pa.ROWS = rows
            tiles, merges, tables, slots = pa.plan([(table, depth, n)], dev, pa.tile_tokens(H, KV), split)
            out = pa.prefill_attention(q, kc, vc, tiles, merges, tables, slots, D ** -0.5)
            us = timed(lambda: pa.prefill_attention(q, kc, vc, tiles, merges, tables, slots, D ** -0.5))
            ref = out.float() if ref is None else ref
            err = ((out.float() - ref).norm() / ref.norm()).item()
            row.append(f"rows {rows} split {split} ({tiles.shape[0] * KV} programs): {us:7.1f} us "
                       f"{4 * pairs * D * H / us / 1e6:5.0f} TF/s d{err:.0e}")
    pa.ROWS = 128
    print(f"chunk {n:4d} depth {depth:6d} | " + " | ".join(row), flush=True)
