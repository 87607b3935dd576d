import gc

from smollm3.infer.metrics import GCPauses, Histogram, freeze_heap


def test_histogram_counts_each_value_at_its_bound_cumulatively():
    h = Histogram((0.01, 0.1, 1.0))
    for x in (0.005, 0.01, 0.05, 0.5, 3.0):  # 0.01 is "at most 0.01": the first bucket
        h.observe(x)
    lines = h.lines("t_seconds", "test")
    assert lines[:2] == ["# HELP t_seconds test", "# TYPE t_seconds histogram"]
    assert lines[2:6] == ['t_seconds_bucket{le="0.01"} 2', 't_seconds_bucket{le="0.1"} 3',
                          't_seconds_bucket{le="1.0"} 4', 't_seconds_bucket{le="+Inf"} 5']
    assert lines[6] == f"t_seconds_sum {0.005 + 0.01 + 0.05 + 0.5 + 3.0}" and lines[7] == "t_seconds_count 5"


def test_gc_pauses_time_collections_only_while_started():
    pauses = GCPauses().start()
    try:
        gc.collect()
        gc.collect(0)
    finally:
        pauses.stop()
    n = sum(pauses.histogram.counts)
    assert n == 2 and pauses.histogram.sum > 0
    gc.collect()
    assert sum(pauses.histogram.counts) == n
    pauses.stop()  # twice is harmless


def test_freeze_heap_skips_what_is_alive_and_still_collects_new_garbage():
    try:
        frozen = freeze_heap()
        assert frozen == gc.get_freeze_count() > 1000
        assert len(gc.get_objects()) < 1000  # the frozen are not tracked by any generation now

        class Node:
            pass

        a, b = Node(), Node()
        a.other, b.other = b, a  # a cycle made after the freeze: collected as ever
        del a, b
        assert gc.collect() >= 2
    finally:
        gc.unfreeze()
