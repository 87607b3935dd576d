"""Acceptance 1: on the real SmolLM2-135M-Instruct (fp32 CPU) the engine's greedy tokens equal transformers'
greedy `generate`, 64 new tokens, token for token; prompts of different lengths batched together give exactly the
tokens each gets alone."""

import pytest
import torch

from smollm3.infer import SamplingParams

pytestmark = pytest.mark.real_weights

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    ("<|im_start|>user\nWrite a short poem about the sea, the wind and the old lighthouse keeper who watched over "
    "the harbour for forty years.<|im_end|>\n<|im_start|>assistant\n"),
]
GREEDY_64 = SamplingParams(max_tokens=64, temperature=0.0, ignore_eos=True)


@pytest.fixture(scope="module")
def alone(smollm2_llm):
    return [smollm2_llm.generate(p, GREEDY_64)[0].output_ids for p in PROMPTS]


def test_greedy_equals_transformers_generate(smollm2_dir, smollm2_llm, alone):
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    for prompt, ours in zip(PROMPTS, alone):
        ids = torch.tensor([smollm2_llm.tokenizer.encode(prompt)])
        with torch.no_grad():
            ref = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=64, do_sample=False,
                              eos_token_id=None, pad_token_id=0)
        assert ours == ref[0, ids.shape[1]:].tolist(), prompt
        assert len(ours) == 64


def test_batched_equals_alone(smollm2_llm, alone):
    lengths = [len(smollm2_llm.tokenizer.encode(p)) for p in PROMPTS]
    assert len(set(lengths)) == len(lengths)  # different lengths, right-padded into one prefill
    batched = smollm2_llm.generate(PROMPTS, GREEDY_64)
    assert [r.output_ids for r in batched] == alone


def test_paged_engine_under_pressure_equals_alone(smollm2_llm, alone):
    """The same tokens when the KV cache holds two sequences' worth (requests preempted and recomputed), prompts are
    read in chunks of 24 tokens, and a repeated prompt head is served from the prefix cache."""
    from smollm3.infer import Engine
    from smollm3.infer.cache import kv_bytes_per_token

    llm = smollm2_llm
    per_token = kv_bytes_per_token(llm.model.config, torch.float32)
    engine = Engine(llm.model, llm.tokenizer, max_model_len=128, max_num_seqs=4, block_size=16,
                    max_num_batched_tokens=24, kv_cache_memory=per_token * (2 * 128 + 16),
                    eos_token_ids=sorted(llm.engine.eos_token_ids))
    ids = [llm.tokenizer.encode(p) for p in PROMPTS]
    reqs = [engine.add_request(p, GREEDY_64) for p in ids]
    while not reqs[2].output_ids:
        engine.step()
    reqs.append(engine.add_request(ids[2], GREEDY_64))  # the chat prompt again: its head is cached by now
    while not all(r.finished for r in reqs):
        engine.step()
    assert engine.stats["preemptions"] > 0 and reqs[3].num_cached_tokens == 32
    assert [r.output_ids for r in reqs] == alone + [alone[2]]
    assert engine.num_free_blocks == engine.blocks.num_blocks
