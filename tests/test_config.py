"""ModelConfig's FLOPs count (PaLM appendix B with the attention pairs a step really scores): one window-long
document is the causal count, 64 documents a 64th of its attention, and what the count leaves out (the embedding
lookup, logits nobody reads) stays out. And sizes as configs and flags spell them (byte_size)."""

import dataclasses
import re

import pytest

from smollm3.config import ModelConfig, byte_size, causal_pairs, preset


def attention_per_pair(cfg: ModelConfig) -> int:
    """Forward FLOPs one (query, key) pair costs over the model: QK^T and PV, 2 FLOPs a multiply-add, every head."""
    return 2 * 2 * cfg.head_dim * cfg.num_attention_heads * cfg.num_hidden_layers


def test_matmul_weights_are_the_parameters_less_norms_and_the_embedding_lookup():
    for tied in (True, False):
        cfg = dataclasses.replace(preset("smollm3-3b"), tie_word_embeddings=tied)
        d, L, V = cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size
        norms = (2 * L + 1) * d
        # tied: the one matrix is the head's GEMM; untied: the input embedding is a lookup, the head a GEMM
        lookup = 0 if tied else V * d
        assert cfg.matmul_weights() == cfg.num_params() - norms - lookup


def test_one_window_long_document_is_palms_count_with_causal_pairs():
    cfg = preset("smollm3-3b")
    T = 32768
    pairs = causal_pairs([T])
    assert pairs == T * (T + 1) // 2
    train_per_token = 3 * cfg.forward_flops(T, pairs) / T
    L, H, Q = cfg.num_hidden_layers, cfg.num_attention_heads, cfg.head_dim
    # PaLM: 6N + 12·L·H·Q·T per token when every token sees T keys; causal tokens see (T + 1) / 2 on average
    assert train_per_token == pytest.approx(6 * cfg.matmul_weights() + 12 * L * H * Q * (T + 1) / 2, rel=1e-12)


def test_64_documents_count_a_64th_of_one_documents_attention():
    cfg = preset("smollm3-3b")
    T, m = 65536, 65536 // 64
    one, many = causal_pairs([T]), causal_pairs([m] * 64)
    assert many == 64 * m * (m + 1) // 2
    assert many / one == pytest.approx((m + 1) / (64 * m + 1), rel=1e-12)  # 1/64 only as m grows
    weights = cfg.forward_flops(T, 0)
    assert cfg.forward_flops(T, one) - weights == attention_per_pair(cfg) * one
    assert cfg.forward_flops(T, many) - weights == attention_per_pair(cfg) * many
    # at 64k the whole-window count is more than the weights' (why the old count read 104.7% MFU on short documents)
    assert cfg.forward_flops(T, one) - weights > weights > 30 * (cfg.forward_flops(T, many) - weights)


def test_every_layer_attends_nope_or_not():
    cfg = preset("smollm3-3b")
    all_rope = dataclasses.replace(cfg, no_rope_layers=[1] * cfg.num_hidden_layers)
    assert cfg.nope_layer_indices and not all_rope.nope_layer_indices
    assert cfg.forward_flops(4096, causal_pairs([4096])) == all_rope.forward_flops(4096, causal_pairs([4096]))


def test_the_lm_head_counts_only_the_positions_whose_logits_are_computed():
    cfg = preset("smollm3-135m")
    full, labelled = cfg.forward_flops(1000, 5000), cfg.forward_flops(1000, 5000, head_tokens=600)
    assert full - labelled == 2 * cfg.vocab_size * cfg.hidden_size * 400


def test_lengths_are_checked_and_padding_is_the_callers_to_leave_out():
    assert causal_pairs([]) == 0 and causal_pairs([1, 1, 1]) == 3 and causal_pairs([3, 0]) == 6
    with pytest.raises(ValueError, match="document length -2 is negative"):
        causal_pairs([4, -2])


def test_byte_size_reads_transformers_size_spellings():
    assert byte_size("5GB", "k") == 5 * 10**9 and byte_size("2GiB", "k") == 2 * 2**30
    assert byte_size("1000", "k") == 1000 and byte_size(7, "k") == 7 and byte_size("1.5KiB", "k") == 1536
    assert byte_size(1.5e9, "k") == 1_500_000_000  # YAML reads 1.5e+9 as a float
    for bad in ("five", "5 GBs", "inf", True, None, [1]):
        with pytest.raises(ValueError, match=re.escape(f"k {bad!r} is not a size; write e.g. 8GiB")):
            byte_size(bad, "k")
    with pytest.raises(ValueError, match="k -1 must be 0 or more"):
        byte_size(-1, "k")
    assert byte_size("0", "k") == 0
    with pytest.raises(ValueError, match="--max-shard-size '0' must be positive"):
        byte_size("0", "--max-shard-size", positive=True)
