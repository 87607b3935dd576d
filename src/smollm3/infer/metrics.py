"""What the server's /metrics adds beyond counters: histograms of the engine's step time and of the garbage
collector's pauses, and the collector's freeze after warm-up.

Both the step and a collection stop every stream at once (a collection holds the GIL, so the engine thread cannot
launch the next step), so either sets the streams' worst gaps between tokens; with 64 streams the p99 of their gaps
is the ~3 slowest steps in 300. The histograms say which it was.

The freeze: a full collection walks every object the process tracks. A server of SmolLM2-135M on the CPU tracks
399,300 after start-up (its libraries, tokenizer and model; a GPU server adds its compiled code), and a full
collection of them took 175-217 ms on a 2-core machine, at whatever step it fell. Frozen objects are skipped by
every later collection (under 0.01 ms there after the freeze), and the ones serving allocates are still collected. vLLM freezes its startup heap after warm-up for the same reason
(vllm/utils/gc_utils.py, freeze_gc_heap).
"""

from __future__ import annotations

import bisect
import gc
import time

# seconds, for steps and pauses alike: a decode step takes 2-5 ms on a GPU, a prompt step beside it 10-60 ms, a full
# collection of a large heap up to seconds
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.0125, 0.015, 0.0175, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075,
                   0.1, 0.25, 0.5, 1.0, 2.5)


class Histogram:
    """A Prometheus histogram: counts of observations at most each bucket's bound, their sum."""

    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS):
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)  # the last: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, value: float):
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value

    def lines(self, name: str, help_: str) -> list[str]:
        """The Prometheus text exposition: cumulative `_bucket{le=...}` lines, `_sum`, `_count`."""
        counts, total = list(self.counts), 0  # a copy: the engine thread may observe meanwhile
        out = [f"# HELP {name} {help_}", f"# TYPE {name} histogram"]
        for bound, c in zip([*map(repr, self.buckets), "+Inf"], counts):
            total += c
            out.append(f'{name}_bucket{{le="{bound}"}} {total}')
        return out + [f"{name}_sum {self.sum}", f"{name}_count {total}"]


class GCPauses:
    """Times every collection of the garbage collector into `histogram` between start() and stop()."""

    def __init__(self):
        self.histogram = Histogram()
        self._began: float | None = None

    def _callback(self, phase: str, info: dict):
        if phase == "start":
            self._began = time.perf_counter()
        elif self._began is not None:
            self.histogram.observe(time.perf_counter() - self._began)
            self._began = None

    def start(self) -> GCPauses:
        gc.callbacks.append(self._callback)
        return self

    def stop(self):
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)


def freeze_heap() -> int:
    """Collect, then move every object alive into the collector's permanent generation, which later collections
    skip. For a server after warm-up: what it holds from then on is its model, compiled code and caches. -> the
    number of objects frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
