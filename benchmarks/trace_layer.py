"""One decoder layer's kernels, in order, from a profiled training step's Chrome trace.

    python3 benchmarks/trace_layer.py out/profile/step5_rank0.json --marker _fwd_kernel --marker _dkdv_kernel

The trainer's `log.profile_step` (or bench_train.py --profile ... --profile-out DIR) writes the trace. A layer's
forward is the window between two consecutive launches of one kernel that runs once a layer forward (the attention
forward), its backward likewise for one that runs once a layer backward. For each `--marker` the window of median
length between two consecutive occurrences is printed (windows that span the end of a forward or a backward are
much longer, so the median is a layer's): kernel, GPU µs, and the idle gap before it. That lists what a kernel table
sums away: which small kernels run where, and how many launches a layer takes.
"""

from __future__ import annotations

import argparse
import json


def kernels(trace: dict) -> list[tuple[float, float, str]]:
    """(start µs, duration µs, name) of every GPU kernel and memset/memcpy, by start."""
    out = [(e["ts"], e.get("dur", 0.0), e["name"]) for e in trace["traceEvents"]
           if e.get("ph") == "X" and e.get("cat") in ("kernel", "gpu_memset", "gpu_memcpy")]
    return sorted(out)


def window(events: list, marker: str) -> list:
    """The events from one occurrence of `marker` up to (not including) the next: the pair of median time span."""
    hits = [i for i, e in enumerate(events) if e[2].startswith(marker)]
    if len(hits) < 2:
        raise SystemExit(f"{marker!r} occurs {len(hits)} times in the trace; pick a kernel that runs once a layer")
    pairs = sorted(zip(hits, hits[1:]), key=lambda p: events[p[1]][0] - events[p[0]][0])
    first, nxt = pairs[len(pairs) // 2]
    return events[first:nxt]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("trace")
    ap.add_argument("--marker", action="append", default=None, help="kernel name prefix (repeatable)")
    args = ap.parse_args()
    with open(args.trace) as f:
        events = kernels(json.load(f))
    for marker in args.marker or ["_fwd_kernel", "_dkdv_kernel"]:
        win = window(events, marker)
        busy = sum(d for _, d, _ in win)
        span = win[-1][0] + win[-1][1] - win[0][0]
        print(f"\n== one layer from {marker}: {len(win)} kernels, {busy:.1f} µs of kernels in {span:.1f} µs")
        prev_end = None
        for ts, dur, name in win:
            gap = "" if prev_end is None else f"{ts - prev_end:6.1f}"
            print(f"{dur:8.1f} {gap:>7}  {name[:110]}")
            prev_end = ts + dur


if __name__ == "__main__":
    main()
