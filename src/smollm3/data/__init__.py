"""The data pipeline (docs/data.md): corpus -> token shards -> pretraining mixture; conversations -> packed SFT
batches; preference pairs -> DPO/APO batches; seeded synthetic tasks with exact answers.

    corpus.py       `smollm3 corpus build`: Debian documentation + Python stdlib -> JSONL per source and language
    prepare.py      `smollm3 data prepare`: documents -> datatrove token shards, parallel and resumable
    shards.py       the shard format: writer, validated memory-mapped reader
    mixture.py      MixtureLoader: weighted sources, stage weights switching at token counts, doc boundaries
    packing.py      best-fit-decreasing packing and batch collation
    sft.py          SFTLoader: chat template -> assistant-only labels -> BFD-packed rows
    preference.py   PreferenceLoader: {prompt, chosen, rejected} -> padding-free DPO/APO rows
    synthetic*.py   math, multi-turn chats, preference pairs, tool calls, RULER-style long-context retrieval

Every loader yields dicts of int64 tensors with labels already shifted (labels[t] is the target at position t,
-100 for no loss) and has state_dict() / load_state_dict() for exact resumption.
"""

from smollm3.data.mixture import MixtureLoader, Stage, stages_from_config
from smollm3.data.packing import bfd_bins, pack_sequences
from smollm3.data.preference import PreferenceLoader
from smollm3.data.sft import SFTLoader
from smollm3.data.shards import ShardWriter, open_shard

__all__ = ["MixtureLoader", "PreferenceLoader", "SFTLoader", "ShardWriter", "Stage", "bfd_bins", "open_shard",
           "pack_sequences", "stages_from_config"]
