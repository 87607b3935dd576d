"""KV-cache blocks: which physical block holds which tokens of which request, and the prefix cache.

The cache is `num_blocks` blocks of `block_size` token positions each. A request's `block_table` lists its blocks
in order: token t lives in block_table[t // block_size] at offset t % block_size. Blocks are handed out as tokens
arrive and come back when a request finishes, is aborted or is preempted, so the number of requests at once is
bounded by the tokens they really hold, never by `max_model_len`.

Prefix caching (vLLM's automatic prefix caching, nano-vllm's block hashing): a block whose `block_size` tokens are
all computed is keyed by a hash of its tokens and of the key of the block before it, so equal keys mean equal
whole prefixes. A new request starts on every leading block of its prompt whose key is known, sharing it (a
reference count) instead of computing it again. A block nobody holds keeps its key and contents; it is reused
when a later prompt has that prefix, and taken for new tokens only after the plain free blocks run out, least
recently used first.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import numpy as np


def block_key(parent: bytes | None, tokens) -> bytes:
    """The prefix-cache key of a full block: tokens and the key of everything before it (16 bytes of blake2b)."""
    h = hashlib.blake2b(digest_size=16)
    if parent is not None:
        h.update(parent)
    h.update(np.asarray(tokens, dtype=np.int64).tobytes())
    return h.digest()


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, prefix_caching: bool = True):
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"need at least one block of at least one token (got {num_blocks} x {block_size})")
        self.num_blocks, self.block_size, self.prefix_caching = num_blocks, block_size, prefix_caching
        self.ref = [0] * num_blocks  # requests holding each block
        self.key: list[bytes | None] = [None] * num_blocks  # prefix-cache key of a full, computed block
        self.free: list[int] = list(range(num_blocks - 1, -1, -1))  # unheld blocks without a key (a stack)
        self.cached: OrderedDict[int, None] = OrderedDict()  # unheld blocks with a key, least recently used first
        self.by_key: dict[bytes, int] = {}
        self.hits = 0  # prompt tokens served from the cache, over the engine's life
        self.queries = 0  # prompt tokens looked up

    # ---- counts

    @property
    def num_free(self) -> int:
        """Blocks that a new token may take now: plain free ones and cached ones nobody holds."""
        return len(self.free) + len(self.cached)

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # ---- a request's blocks

    def cached_prefix(self, tokens: list[int], memo: list[bytes] | None = None) -> tuple[list[int], list[bytes]]:
        """The leading full blocks of `tokens` found in the cache -> (block ids, their keys). The last token is never
        served from the cache (its logits are needed), so at most (len - 1) // block_size blocks. `memo`: the keys
        of these tokens' leading blocks found so far (a list kept by the caller for tokens that only grow), reused
        and extended in place."""
        if not self.prefix_caching:
            return [], []
        ids, keys, parent = [], [], None
        bs = self.block_size
        memo = [] if memo is None else memo
        for i in range((len(tokens) - 1) // bs):
            if i == len(memo):
                memo.append(block_key(parent, tokens[i * bs:(i + 1) * bs]))
            parent = memo[i]
            b = self.by_key.get(parent)
            if b is None:
                break
            ids.append(b)
            keys.append(parent)
        return ids, keys

    def can_allocate(self, cached: list[int], num_tokens: int) -> bool:
        """Could a request start with these cached blocks and room for its first `num_tokens` tokens?"""
        revived = sum(1 for b in cached if self.ref[b] == 0)  # unheld cached blocks leave the free pool when taken
        return self.blocks_for(num_tokens) - len(cached) <= self.num_free - revived

    def take_cached(self, block_table: list[int], cached: list[int]):
        """Start a request on its cached prefix blocks (sharing them)."""
        for b in cached:
            if self.ref[b] == 0:
                self.cached.pop(b)
            self.ref[b] += 1
            block_table.append(b)

    def grow(self, block_table: list[int], num_tokens: int) -> bool:
        """Give the table enough blocks for `num_tokens` tokens; False (nothing taken) if the pool is short."""
        need = self.blocks_for(num_tokens) - len(block_table)
        if need > self.num_free:
            return False
        for _ in range(max(need, 0)):
            block_table.append(self._take())
        return True

    def release(self, block_table: list[int]):
        """A request gives its blocks back (finish, abort, preemption). Keyed blocks stay findable, most recently
        used last; the table's last blocks are released first, so a prefix's head outlives its tail."""
        for b in reversed(block_table):
            self.ref[b] -= 1
            if self.ref[b] == 0:
                if self.key[b] is not None:
                    self.cached[b] = None
                else:
                    self.free.append(b)
        block_table.clear()

    def register(self, block_table: list[int], keys: list[bytes], tokens, num_computed: int):
        """Key every block of the request that is now full and computed (its K/V written for all its tokens), so
        later prompts can reuse it. `keys` is the request's list of keys so far, extended in place; `tokens(start,
        end)` gives the request's tokens in a range."""
        if not self.prefix_caching:
            return
        bs = self.block_size
        while len(keys) < num_computed // bs:
            i = len(keys)
            key = block_key(keys[-1] if keys else None, tokens(i * bs, (i + 1) * bs))
            keys.append(key)
            b = block_table[i]
            if self.key[b] is None and key not in self.by_key:  # a twin computed meanwhile keeps the entry
                self.key[b] = key
                self.by_key[key] = b

    # ----

    def _take(self) -> int:
        if self.free:
            b = self.free.pop()
        else:  # evict the least recently used cached block
            b, _ = self.cached.popitem(last=False)
            del self.by_key[self.key[b]]
            self.key[b] = None
        self.ref[b] = 1
        return b

    def check(self):
        """Internal consistency (tests): every block is held, free or cached, exactly once."""
        held = {b for b in range(self.num_blocks) if self.ref[b] > 0}
        assert not held & set(self.free) and not held & set(self.cached) and not set(self.free) & set(self.cached)
        assert len(held) + len(self.free) + len(self.cached) == self.num_blocks
        assert all(self.key[b] is not None for b in self.cached)
        assert all(self.by_key[self.key[b]] == b for b in range(self.num_blocks) if self.key[b] is not None)
