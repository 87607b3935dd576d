"""The scheduler's cap on prompt work beside decoding streams (infer/scheduler.py): counted in tokens of a fresh
prompt, a token at context c counting 1 + c / break_even, so chunks shrink as a long prompt's context grows."""

import pytest

from smollm3 import preset
from smollm3.infer.block_manager import BlockManager
from smollm3.infer.sampling import SamplingParams
from smollm3.infer.scheduler import Scheduler
from smollm3.infer.sequence import Request


def _stream_and_long_prompt(scheduler: Scheduler, prompt_len: int) -> tuple[Request, Request]:
    """A request that decodes (its prompt done, one token out) and a long prompt waiting."""
    stream = Request([1] * 8, SamplingParams())
    scheduler.waiting.append(stream)
    (r, n), = scheduler.schedule().prefill
    r.num_computed += n
    r.output_ids.append(5)
    long = Request(list(range(2, 2 + prompt_len)), SamplingParams())
    scheduler.waiting.append(long)
    return stream, long


def _chunks(scheduler: Scheduler, stream: Request, long: Request) -> list[tuple[int, int]]:
    """(start, tokens) of each step's chunk of the long prompt while the stream decodes beside it."""
    chunks = []
    while long.num_computed < long.num_tokens:
        plan = scheduler.schedule()
        assert plan.decode == [stream]
        stream.num_computed += 1
        stream.output_ids.append(5)
        (r, n), = plan.prefill
        assert r is long
        chunks.append((long.num_computed, n))
        long.num_computed += n
    return chunks


def test_cap_counts_prompt_tokens_without_a_break_even():
    s = Scheduler(BlockManager(256, 16, prefix_caching=False), 4, 2048, max_prefill_tokens_during_decode=100)
    stream, long = _stream_and_long_prompt(s, 1000)
    assert [n for _, n in _chunks(s, stream, long)] == [100] * 10


def test_chunks_shrink_as_the_context_grows_and_each_pays_the_cap():
    cap, even = 256, 1000.0
    s = Scheduler(BlockManager(512, 16, prefix_caching=False), 4, 2048, max_prefill_tokens_during_decode=cap,
                  attention_break_even=even)
    stream, long = _stream_and_long_prompt(s, 4000)
    chunks = _chunks(s, stream, long)

    def work(start, n):  # each token: 1 + its context / break_even
        return sum(1 + (start + i) / even for i in range(n))

    assert chunks[0] == (0, 229)  # n + n(n-1)/2000 <= 256 at the start: 229 counts 255.1, 230 would count 256.3
    assert [n for _, n in chunks] == sorted((n for _, n in chunks), reverse=True)  # never growing
    assert chunks[-2][1] < cap / 4  # at 3,900 keys a token counts ~4.9
    for start, n in chunks[:-1]:  # each full chunk spends the cap, and one token more would pass it
        assert cap - (1 + (start + n) / even) < work(start, n) <= cap


def test_an_idle_engine_reads_a_whole_budget_and_a_deep_chunk_still_progresses():
    s = Scheduler(BlockManager(512, 16, prefix_caching=False), 4, 512, max_prefill_tokens_during_decode=1,
                  attention_break_even=10.0)
    s.waiting.append(Request(list(range(2, 2000)), SamplingParams()))
    assert [n for _, n in s.schedule().prefill] == [512]  # nobody decodes: no cap
    s = Scheduler(BlockManager(512, 16, prefix_caching=False), 4, 512, max_prefill_tokens_during_decode=1,
                  attention_break_even=10.0)
    stream, long = _stream_and_long_prompt(s, 300)
    assert [n for _, n in _chunks(s, stream, long)] == [1] * 300  # one token counts more than the cap: still 1


def test_break_even_is_where_a_tokens_attention_equals_its_weights():
    cfg = preset("smollm3-3b")
    even = cfg.attention_break_even()
    assert even == 19072
    assert cfg.forward_flops(1, even, head_tokens=0) == 2 * cfg.forward_flops(1, 0, head_tokens=0)
    with pytest.raises(ValueError, match="attention_break_even must be positive"):
        Scheduler(BlockManager(8, 16), 1, 16, attention_break_even=0)


def test_busy_requests_neither_decode_nor_take_chunks_and_nothing_is_admitted():
    """While a prompt step divided over engine steps runs (its requests `busy`), the plan decodes the others only:
    a busy request that could decode (a preempted one recomputing only its last token) does not, and no waiting
    request is admitted."""
    s = Scheduler(BlockManager(64, 16, prefix_caching=False), 4, 2048)
    stream, long = _stream_and_long_prompt(s, 100)
    (r, n), = s.schedule().prefill
    assert r is long and n == 100
    long.num_computed, long.output_ids = n, [7]  # as if it were sampled: it could decode now
    s.waiting.append(Request([3] * 5, SamplingParams()))
    plan = s.schedule(busy=frozenset([long]))
    assert plan.decode == [stream] and not plan.prefill and len(s.waiting) == 1
    plan = s.schedule()
    assert plan.decode == [stream, long] and [n for _, n in plan.prefill] == [5]
