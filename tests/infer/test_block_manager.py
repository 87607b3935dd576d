"""KV blocks and the prefix cache (infer/block_manager.py): blocks handed out and returned, shared prefixes found by
their chained keys, unheld cached blocks reused before they are evicted, least recently used evicted first."""

from smollm3.infer.block_manager import BlockManager, block_key


def computed(bm: BlockManager, tokens: list[int]) -> tuple[list[int], list[bytes]]:
    """A request whose tokens are all computed: its blocks, keyed."""
    table, keys = [], []
    assert bm.grow(table, len(tokens))
    bm.register(table, keys, lambda a, b: tokens[a:b], len(tokens))
    return table, keys


def test_blocks_are_handed_out_and_returned():
    bm = BlockManager(num_blocks=8, block_size=4, prefix_caching=False)
    a, b = [], []
    assert bm.grow(a, 9) and len(a) == 3 and bm.num_free == 5  # 9 tokens: 3 blocks
    assert bm.grow(a, 12) and len(a) == 3  # still fits
    assert bm.grow(b, 20) and len(b) == 5 and bm.num_free == 0
    assert not bm.grow(a, 13) and len(a) == 3  # nothing taken when short
    assert len(set(a) | set(b)) == 8
    bm.release(b)
    assert b == [] and bm.num_free == 5
    bm.check()


def test_prefix_blocks_are_shared_and_survive_their_owner():
    bm = BlockManager(num_blocks=16, block_size=4)
    system = list(range(100, 112))  # 3 full blocks
    first, _ = computed(bm, system + [1, 2, 3, 4, 5])  # 4 full blocks + 1 partial
    # a second prompt with the same 12-token prefix and another turn: the 3 prefix blocks are found
    prompt = system + [7, 8, 9, 10, 11]
    cached, keys = bm.cached_prefix(prompt)
    assert cached == first[:3] and keys[-1] == block_key(block_key(block_key(None, system[:4]), system[4:8]),
                                                         system[8:12])
    table = []
    bm.take_cached(table, cached)
    assert all(bm.ref[i] == 2 for i in first[:3])
    # the owner leaves: its keyed blocks stay findable (unheld, cached), its partial block is plainly free
    bm.release(list(first))  # (release empties the table it is given)
    assert bm.cached_prefix(system + [1, 2, 3, 4, 9])[0] == first[:4]
    assert all(bm.ref[i] == 1 for i in table)
    bm.check()
    # a different first block changes every key after it: nothing is found
    assert bm.cached_prefix([0] + system[1:] + [1, 2, 3, 4, 9]) == ([], [])
    # the last token is never served from the cache: a prompt of exactly 3 cached blocks finds 2
    assert len(bm.cached_prefix(system)[0]) == 2


def test_cached_blocks_are_evicted_least_recently_used_first_and_only_when_needed():
    bm = BlockManager(num_blocks=6, block_size=2)
    old, _ = computed(bm, [1, 2, 3, 4])
    new, _ = computed(bm, [5, 6, 7, 8])
    bm.release(list(old))
    bm.release(list(new))
    assert bm.num_free == 6 and len(bm.cached) == 4
    t = []
    assert bm.grow(t, 4)  # two plain free blocks first: nothing evicted
    assert bm.cached_prefix([1, 2, 3, 4, 0])[0] == old and bm.cached_prefix([5, 6, 7, 8, 0])[0] == new
    assert bm.grow(t, 6)  # one more: the least recently released block goes (the tail of `old` first)
    assert bm.cached_prefix([1, 2, 3, 4, 0])[0] == old[:1] and bm.cached_prefix([5, 6, 7, 8, 0])[0] == new
    bm.check()
    # a revived cached block leaves the free pool: can_allocate counts it
    cached, _ = bm.cached_prefix([5, 6, 7, 8, 0])
    assert bm.num_free == 3 and bm.can_allocate(cached, 4 + 2) and not bm.can_allocate(cached, 4 + 4)


def test_no_prefix_caching_keys_nothing():
    bm = BlockManager(num_blocks=4, block_size=2, prefix_caching=False)
    t, keys = computed(bm, [1, 2, 3, 4])
    assert keys == [] and bm.by_key == {} and bm.cached_prefix([1, 2, 3, 4, 5]) == ([], [])
    bm.release(t)
    assert len(bm.free) == 4


def test_a_waiting_prompt_is_hashed_once(monkeypatch):
    """A request that waits for blocks looks its prefix up every step: with its memo, each block is hashed once,
    and the keys, the blocks found and the memo stay right as the cache and the tokens change."""
    import smollm3.infer.block_manager as bm_mod

    bm = BlockManager(num_blocks=16, block_size=4)
    system = list(range(100, 112))
    first, keys = computed(bm, system + [1, 2, 3, 4, 5])
    calls = []
    monkeypatch.setattr(bm_mod, "block_key", lambda parent, tokens: calls.append(1) or block_key(parent, tokens))
    prompt, memo = system + [1, 2, 3, 4, 6, 7, 8, 9, 10], []
    assert bm.cached_prefix(prompt, memo) == (first[:4], keys[:4]) and len(calls) == 5  # the 5th block: a miss
    assert bm.cached_prefix(prompt, memo) == (first[:4], keys[:4]) and len(calls) == 5  # next step: no hashing
    assert memo[:4] == keys[:4] and len(memo) == 5
    other, more = computed(bm, prompt)  # meanwhile another request computes the whole prompt: its 5th block is new
    assert bm.cached_prefix(prompt, memo) == (first[:4] + other[4:5], more[:5]) and len(calls) == 5 + 5  # (its
    # register hashed 5 blocks; the lookup none)
