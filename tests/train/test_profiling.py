"""The profile summary's arithmetic (train/profiling.py): busy time is the union of kernel intervals, idle gaps are
what lies between them, binned by length."""

from smollm3.train.profiling import bin_gaps, busy_and_gaps


def test_busy_time_is_the_union_and_gaps_are_what_lies_between():
    kernels = [(0.0, 10.0, "a"), (5.0, 20.0, "b"), (8.0, 12.0, "inside b"), (25.0, 30.0, "c"), (1030.0, 1040.0, "d")]
    busy, gaps = busy_and_gaps(kernels)
    assert busy == 20.0 + 5.0 + 10.0
    assert gaps == [(5.0, "b", "c", 20.0), (1000.0, "c", "d", 30.0)]
    binned = bin_gaps(gaps)
    assert binned["0-10us"] == {"count": 1, "ms": 0.01} and binned["1000-infus"] == {"count": 1, "ms": 1.0}
    assert binned["10-100us"]["count"] == binned["100-1000us"]["count"] == 0
    assert busy_and_gaps([]) == (0.0, [])
