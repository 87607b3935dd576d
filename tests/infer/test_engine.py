"""The engine on a tiny random SmolLM3 (fp32 CPU): greedy tokens equal the reference one-prompt loop, batching and
continuous batching change nothing, and stops, lengths, seeds, aborts and YaRN behave as documented."""

import json

import pytest
import torch

from smollm3 import ModelConfig, build_model, load_pretrained
from smollm3.generate import generate as reference_generate
from smollm3.infer import Engine, SamplingParams, extend_context, load_for_inference
from smollm3.infer.llm import build_engine

GREEDY = {"temperature": 0.0, "ignore_eos": True}


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    model = load_pretrained(tiny_dir, dtype=torch.float32)
    engine, _ = build_engine(tiny_dir, device="cpu", dtype=torch.float32, max_num_seqs=4, max_model_len=256)
    return model, engine


def prompts(n_tokens, vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (n,), generator=g).tolist() for n in n_tokens]


def test_greedy_batched_equals_reference_loop(tiny):
    model, engine = tiny
    ps = prompts([3, 17, 40, 90], model.config.vocab_size)
    reqs = engine.generate(ps, SamplingParams(max_tokens=24, **GREEDY))
    for p, r in zip(ps, reqs):
        assert r.output_ids == reference_generate(model, p, max_new_tokens=24, temperature=0.0)
        assert r.finish_reason == "length" and len(r.output_ids) == 24
    assert engine.num_running == 0


def test_continuous_batching_requests_join_and_leave(tiny):
    """More requests than max_num_seqs, arriving while others decode, with different lengths: each gets its solo tokens."""
    model, engine = tiny
    ps = prompts([5, 33, 12, 60, 8, 21], model.config.vocab_size, seed=1)
    lengths = [6, 20, 9, 14, 25, 3]
    alone = [engine.generate([p], SamplingParams(max_tokens=n, **GREEDY))[0].output_ids for p, n in zip(ps, lengths)]
    reqs = [engine.add_request(p, SamplingParams(max_tokens=n, **GREEDY)) for p, n in zip(ps[:2], lengths[:2])]
    for _ in range(3):
        engine.step()
    reqs += [engine.add_request(p, SamplingParams(max_tokens=n, **GREEDY)) for p, n in zip(ps[2:], lengths[2:])]
    most_running = 0
    while not all(r.finished for r in reqs):
        engine.step()
        most_running = max(most_running, engine.num_running)
    assert most_running == engine.max_num_seqs == 4
    assert [r.output_ids for r in reqs] == alone


def test_stop_string_cuts_text_and_stream_never_shows_it(tiny):
    _, engine = tiny
    p = prompts([10], engine.config.vocab_size, seed=2)[0]
    full = engine.generate([p], SamplingParams(max_tokens=40, **GREEDY))[0].text
    assert len(full) > 20
    stop = full[len(full) // 2: len(full) // 2 + 3]
    cut = full[:full.index(stop)]
    deltas = []
    r = engine.add_request(p, SamplingParams(max_tokens=40, stop=[stop], **GREEDY),
                           on_update=lambda r: deltas.append(r.take_delta()))
    while not r.finished:
        engine.step()
    assert r.text == cut and "".join(deltas) == cut
    assert r.finish_reason == "stop" and r.stop_reason == stop


def test_stop_token_ids_and_eos(tiny):
    _, engine = tiny
    p = prompts([10], engine.config.vocab_size, seed=3)[0]
    out = engine.generate([p], SamplingParams(max_tokens=30, **GREEDY))[0].output_ids
    stop_id = out[4]
    r = engine.generate([p], SamplingParams(max_tokens=30, stop_token_ids=[stop_id], **GREEDY))[0]
    assert r.output_ids == out[:out.index(stop_id) + 1]  # the stop id is the last token ...
    assert r.finish_reason == "stop" and r.stop_reason == stop_id
    assert r.text == engine.tokenizer.decode(out[:out.index(stop_id)])  # ... and not in the text
    # the model's eos stops too unless ignore_eos: make the eos the token greedy picks next
    eos_engine = Engine(engine.model, engine.tokenizer, max_model_len=128, eos_token_ids=[stop_id])
    r = eos_engine.generate([p], SamplingParams(max_tokens=30, temperature=0.0))[0]
    assert r.output_ids[-1] == stop_id and r.finish_reason == "stop"


def test_context_limit(tiny):
    model, _ = tiny
    engine = Engine(model, None, max_model_len=64, max_num_seqs=2)
    r = engine.generate(prompts([60], model.config.vocab_size), SamplingParams(max_tokens=100, **GREEDY))[0]
    assert r.finish_reason == "length" and len(r.output_ids) == 4  # 60 + 4 = the whole context
    with pytest.raises(ValueError, match="context is 64"):
        engine.add_request(list(range(3, 67)), SamplingParams(max_tokens=1))
    with pytest.raises(ValueError, match="empty"):
        engine.add_request([], SamplingParams())
    with pytest.raises(ValueError, match="token ids"):
        engine.add_request([model.config.vocab_size], SamplingParams())
    with pytest.raises(ValueError, match="top_p"):
        engine.add_request([5], SamplingParams(top_p=0.0))
    with pytest.raises(ValueError, match="KV cache"):
        Engine(model, None, max_model_len=1024, kv_cache_memory=1000)


def test_seed_gives_same_tokens_whatever_the_batch(tiny):
    _, engine = tiny
    ps = prompts([7, 30, 15], engine.config.vocab_size, seed=4)
    sp = SamplingParams(max_tokens=16, temperature=1.0, top_p=0.95, seed=123)
    alone = engine.generate([ps[0]], sp)[0].output_ids
    mixed = engine.generate(ps, [sp, SamplingParams(max_tokens=16, temperature=1.0),
                                 SamplingParams(max_tokens=5, temperature=0.7, seed=9)])
    assert mixed[0].output_ids == alone
    other = engine.generate([ps[0]], SamplingParams(max_tokens=16, temperature=1.0, top_p=0.95, seed=124))[0]
    assert other.output_ids != alone


def test_abort_frees_the_blocks(tiny):
    _, engine = tiny
    free = engine.num_free_blocks
    r = engine.add_request(prompts([9], engine.config.vocab_size)[0], SamplingParams(max_tokens=200, **GREEDY))
    engine.step()
    engine.step()
    assert r.block_table and engine.num_running == 1 and engine.num_free_blocks == free - len(r.block_table)
    engine.abort(r)
    engine.step()
    assert r.finish_reason == "abort" and engine.num_running == 0 and not engine.has_work()
    assert engine.stats["aborted"] >= 1 and engine.num_free_blocks == free and not r.block_table
    engine.blocks.check()


def test_warm_up_runs_before_the_first_request_only(tiny_dir):
    engine, _ = build_engine(tiny_dir, device="cpu", dtype=torch.float32, max_num_seqs=2, max_model_len=256)
    assert engine.warm_up() == (0, 0)  # no CUDA graphs or prefill padding on the CPU: nothing to warm
    engine.add_request([5, 6, 7], SamplingParams(max_tokens=2, **GREEDY))
    with pytest.raises(RuntimeError, match="before the first request"):
        engine.warm_up()


def test_repetition_penalty_changes_greedy_output(tiny):
    """Random weights repeat themselves under greedy decoding; a strong penalty must break the loops."""
    _, engine = tiny
    p = prompts([6], engine.config.vocab_size, seed=5)[0]
    plain = engine.generate([p], SamplingParams(max_tokens=40, **GREEDY))[0].output_ids
    penalised = engine.generate([p], SamplingParams(max_tokens=40, repetition_penalty=5.0, **GREEDY))[0].output_ids
    assert len(set(penalised)) > len(set(plain))


def test_yarn_on_demand_in_memory_only(tiny_dir):
    on_disk = json.loads((tiny_dir / "config.json").read_text())
    notices = []
    model, _, _ = load_for_inference(tiny_dir, device="cpu", dtype=torch.float32, max_model_len=2048,
                                     log=notices.append)
    assert notices and "x2" in notices[0]
    assert model.config.max_position_embeddings == 2048
    assert model.config.rope_scaling == {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 1024}
    assert json.loads((tiny_dir / "config.json").read_text()) == on_disk  # never written back
    # the same tables as a model whose config asks for YaRN from the start
    cfg = ModelConfig.from_json(tiny_dir / "config.json")
    cfg.max_position_embeddings, cfg.rope_scaling = 2048, {"rope_type": "yarn", "factor": 2.0,
                                                           "original_max_position_embeddings": 1024}
    ref = build_model(ModelConfig(**cfg.__dict__))
    torch.testing.assert_close(model.model.rotary_emb.inv_freq, ref.model.rotary_emb.inv_freq)
    assert model.model.rotary_emb.attention_scaling == ref.model.rotary_emb.attention_scaling > 1
    # within the original context nothing changes
    plain = load_pretrained(tiny_dir, dtype=torch.float32)
    assert extend_context(plain, 1024) is None and plain.config.rope_scaling is None
    engine = Engine(model, None, max_model_len=2048, max_num_seqs=1)
    r = engine.generate([[3 + i % 700 for i in range(1500)]], SamplingParams(max_tokens=2, **GREEDY))[0]
    assert len(r.output_ids) == 2


def test_bucketed_decode_shapes_change_nothing(tiny):
    """The CUDA-graph path pads decode to batch and KV-length buckets (padding rows write to the scratch block, extra
    keys are masked) and computes attention with grouped matmuls instead of CPU SDPA; run exactly that on CPU."""
    model, _ = tiny
    ps = prompts([5, 40, 300], model.config.vocab_size, seed=6)
    sp = SamplingParams(max_tokens=12, **GREEDY)
    plain = Engine(model, None, max_model_len=512, max_num_seqs=6).generate(ps, sp)
    padded = Engine(model, None, max_model_len=512, max_num_seqs=6)
    padded.runner.bucket_shapes, padded.runner.cache.sdpa_decode = True, False
    first = padded.add_request(ps[0], sp)  # finishes early: later steps decode without it
    padded.step()
    rest = [padded.add_request(p, sp) for p in ps[1:]]
    while not all(r.finished for r in [first, *rest]):
        padded.step()
    assert [r.output_ids for r in [first, *rest]] == [r.output_ids for r in plain]


def test_defaults_and_stop_ids_come_from_the_model_directory(tiny_dir, tmp_path):
    import shutil

    d = tmp_path / "model"
    shutil.copytree(tiny_dir, d)
    (d / "generation_config.json").write_text(json.dumps({"temperature": 0.3, "top_p": 0.5, "eos_token_id": [7, 9]}))
    engine, template = build_engine(d, device="cpu", dtype=torch.float32, max_model_len=64, max_num_seqs=1)
    assert engine.defaults == {"temperature": 0.3, "top_p": 0.5}
    assert {7, 9} <= engine.eos_token_ids and engine.tokenizer.eos_token_id in engine.eos_token_ids
    assert template == (d / "chat_template.jinja").read_text()
    r = engine.add_request([5, 6], SamplingParams(max_tokens=1))
    assert (r.params.temperature, r.params.top_p, r.params.top_k) == (0.3, 0.5, 0)
    (d / "generation_config.json").unlink()
    engine, _ = build_engine(d, device="cpu", dtype=torch.float32, max_model_len=64, max_num_seqs=1,
                             chat_template="official")
    assert engine.defaults == {"temperature": 0.6, "top_p": 0.95}  # SmolLM3's recommendation


def test_chunked_prefill_keeps_streams_flowing(tiny):
    """A long prompt is read a token budget at a time, in the same steps as a running stream's decode: the stream
    gets a token every step, and both get exactly their solo tokens."""
    model, _ = tiny
    short, long = prompts([6, 300], model.config.vocab_size, seed=7)
    sp = SamplingParams(max_tokens=30, **GREEDY)
    solo = Engine(model, None, max_model_len=512, max_num_seqs=4)
    ref = [solo.generate([p], sp)[0].output_ids for p in (short, long)]
    engine = Engine(model, None, max_model_len=512, max_num_seqs=4, max_num_batched_tokens=32, block_size=16)
    a = engine.add_request(short, sp)
    for _ in range(3):
        engine.step()
    b = engine.add_request(long, sp)
    chunk_steps = 0
    while not b.output_ids:
        before = len(a.output_ids)
        engine.step()
        chunk_steps += 1
        assert len(a.output_ids) == before + 1  # the stream never waits for the long prompt
    assert chunk_steps == -(-300 // 31)  # 31 prompt tokens a step beside the stream's one
    while not (a.finished and b.finished):
        engine.step()
    assert [a.output_ids, b.output_ids] == ref

    # with a cap on prompt tokens while streams decode: 8 a step beside the stream, the whole budget when alone
    engine = Engine(model, None, max_model_len=512, max_num_seqs=4, max_num_batched_tokens=32, block_size=16,
                    max_prefill_tokens_during_decode=8)
    a = engine.add_request(short, sp)
    engine.step()
    b = engine.add_request(long, sp)
    while not a.finished:
        before = (len(a.output_ids), b.num_computed)
        engine.step()
        assert len(a.output_ids) == before[0] + 1 and b.num_computed - before[1] <= 8
    before = b.num_computed
    engine.step()
    assert b.num_computed - before == 32  # nobody decodes: the whole budget
    while not (a.finished and b.finished):
        engine.step()
    assert [a.output_ids, b.output_ids] == ref


def test_prompt_step_split_by_layers_keeps_streams_flowing_exactly(tiny):
    """max_prefill_layers_during_decode: a prompt step begun while a stream decodes runs a layer per engine step
    (the tiny model has 4), each after the stream's decode: the stream gets a token every step, a chunk takes 4
    steps, and every reply is its solo reply. A request aborted while its step is half run leaves every block back
    in the pool and the stream's reply exact."""
    model, _ = tiny
    layers = model.config.num_hidden_layers
    short, long, late = prompts([6, 300, 9], model.config.vocab_size, seed=7)
    sp = SamplingParams(max_tokens=40, **GREEDY)
    solo = Engine(model, None, max_model_len=512, max_num_seqs=4, fast_decode=True)
    ref = [solo.generate([p], sp)[0].output_ids for p in (short, long, late)]
    engine = Engine(model, None, max_model_len=512, max_num_seqs=4, max_num_batched_tokens=64, block_size=16,
                    fast_decode=True, max_prefill_layers_during_decode=1)
    a = engine.add_request(short, sp)
    engine.step()
    b = engine.add_request(long, sp)
    engine.step()  # b's first chunk begins
    c = engine.add_request(late, sp)
    progress = []
    while not b.output_ids:
        before = (len(a.output_ids), b.num_computed)
        engine.step()
        assert len(a.output_ids) == before[0] + 1  # the stream never waits for the prompt step
        progress.append(b.num_computed - before[1])
    # each 63-token chunk lands on its step's 4th layer; the first began before the loop
    assert progress[:layers - 1] == [0] * (layers - 2) + [63] and progress[layers - 1:2 * layers - 1] == \
        [0] * (layers - 1) + [63]
    while not (a.finished and b.finished and c.finished):
        engine.step()
    assert [a.output_ids, b.output_ids, c.output_ids] == ref
    assert engine.num_free_blocks == engine.blocks.num_blocks

    # abort a request whose prompt step is half run: its rest is launched, the blocks all come back
    a = engine.add_request(short, sp)
    engine.step()
    b = engine.add_request(prompts([300], model.config.vocab_size, seed=12)[0], sp)  # nothing of it cached
    engine.step()
    engine.step()
    assert engine._prompt is not None and b.num_computed == 0  # its first step: 2 of 4 layers run
    engine.abort(b)
    while not a.finished:
        engine.step()
    assert b.finish_reason == "abort" and a.output_ids == ref[0]
    assert engine.num_free_blocks == engine.blocks.num_blocks
    engine.blocks.check()


def test_prompt_step_split_preempted_half_run_recomputes_exactly(tiny):
    """The stream needs a block while the newest request's prompt step is half run and none is free: that request
    is preempted (its step's rest launched first, its result dropped), recomputes later, and both replies are
    their solo replies."""
    model, _ = tiny
    from smollm3.infer.cache import kv_bytes_per_token

    short, long = prompts([6, 63], model.config.vocab_size, seed=13)
    sp = SamplingParams(max_tokens=40, **GREEDY)
    solo = Engine(model, None, max_model_len=80, max_num_seqs=4, fast_decode=True, block_size=16)
    ref = [solo.generate([p], sp)[0].output_ids for p in (short, long)]
    engine = Engine(model, None, max_model_len=80, max_num_seqs=4, max_num_batched_tokens=64, block_size=16,
                    fast_decode=True, max_prefill_layers_during_decode=1,
                    kv_cache_memory=kv_bytes_per_token(model.config, torch.float32) * 16 * 6)  # 5 blocks + scratch
    assert engine.num_free_blocks == 5
    a = engine.add_request(short, sp)
    while a.num_computed < 13:
        engine.step()
    b = engine.add_request(long, sp)
    engine.step()  # b takes the 4 blocks left and begins; a writes position 13, 14, 15 in its first block
    busy_when_preempted = []
    while not b.num_preemptions:
        busy_when_preempted = [c[0] for c in engine._prompt or ()]
        engine.step()
    assert busy_when_preempted == [b] and a.num_computed == 17  # a took one of b's blocks for position 16
    while not (a.finished and b.finished):
        engine.step()
    assert [a.output_ids, b.output_ids] == ref
    assert engine.num_free_blocks == 5
    engine.blocks.check()


def test_prompt_step_split_refused_where_it_cannot_run(tiny):
    model, _ = tiny
    with pytest.raises(ValueError, match=r"--max-prefill-layers-during-decode\) runs a prompt step a few layers at a "
                                         "time on the fused step"):
        Engine(model, None, max_model_len=256, max_prefill_layers_during_decode=1)  # the CPU's default: no fused step
    with pytest.raises(ValueError, match="max_prefill_layers_during_decode must be at least 1, got 0"):
        Engine(model, None, max_model_len=256, fast_decode=True, max_prefill_layers_during_decode=0)
    # as many layers as the model has, or more: one step, as without it
    assert Engine(model, None, max_model_len=256, max_prefill_layers_during_decode=4).max_prefill_layers_during_decode \
        is None


def test_prefix_cache_serves_shared_prompt_heads_exactly(tiny):
    model, _ = tiny
    head = prompts([100], model.config.vocab_size, seed=8)[0]
    tails = prompts([5, 17, 30], model.config.vocab_size, seed=9)
    sp = SamplingParams(max_tokens=12, **GREEDY)
    plain = Engine(model, None, max_model_len=256, max_num_seqs=4, prefix_caching=False)
    ref = [plain.generate([head + t], sp)[0].output_ids for t in tails]
    engine = Engine(model, None, max_model_len=256, max_num_seqs=4, block_size=16)
    first = engine.generate([head + tails[0]], sp)[0]
    assert first.num_cached_tokens == 0
    rest = engine.generate([head + t for t in tails[1:]], sp)
    assert [r.num_cached_tokens for r in rest] == [96, 96]  # 6 whole blocks of the 100-token head
    assert [r.output_ids for r in [first, *rest]] == ref
    # a request that repeats a finished one (prompt and output) is served from the blocks its output filled
    again = engine.generate([head + tails[0] + first.output_ids[:8]], sp)[0]
    assert again.num_cached_tokens == 112 and engine.stats["cached_prompt_tokens"] == 96 * 2 + 112
    assert plain.generate([head + tails[0] + first.output_ids[:8]], sp)[0].output_ids == again.output_ids
    engine.blocks.check()


def test_preemption_under_memory_pressure_recomputes_exactly(tiny):
    """Six requests whose contexts together need twice the cache: the newest running ones are preempted and
    recomputed later, every output is the request's solo output, and every block comes back."""
    model, _ = tiny
    ps = prompts([40, 70, 25, 90, 55, 10], model.config.vocab_size, seed=10)
    sp = SamplingParams(max_tokens=60, **GREEDY)
    solo = Engine(model, None, max_model_len=256, max_num_seqs=6)
    ref = [solo.generate([p], sp)[0].output_ids for p in ps]
    from smollm3.infer.cache import kv_bytes_per_token

    per_token = kv_bytes_per_token(model.config, torch.float32)
    engine = Engine(model, None, max_model_len=256, max_num_seqs=6, block_size=16,
                    kv_cache_memory=per_token * (256 + 16))  # 256 tokens and the scratch block
    assert engine.kv_cache_tokens == 256
    out = engine.generate(ps, sp)
    assert engine.stats["preemptions"] > 0 and any(r.num_preemptions for r in out)
    assert [r.output_ids for r in out] == ref
    assert engine.num_free_blocks == 16 and engine.num_running == 0
    engine.blocks.check()


@pytest.mark.parametrize("split", [None, 1])
def test_pipelined_decode_under_pressure_equals_solo_runs(tiny, split):
    """The pipelined greedy path (the fused decode step, whose tokens the host reads one step late, as on the GPU)
    with small blocks, the prefix cache on and preemption: replies that end at every offset within a block (so the
    late read's token ends a reply whose blocks it releases) give each request's solo tokens, and every block
    returns. Found on the H200: the late read offered a just-finished reply's released blocks to the prefix cache.
    split: prompt steps run a layer per engine step while streams decode, so requests are also preempted with their
    prompt step half run."""
    model, _ = tiny
    from smollm3.infer.cache import kv_bytes_per_token

    ps = prompts([5, 9, 13, 20, 31, 4, 17, 26], model.config.vocab_size, seed=11)
    params = [SamplingParams(max_tokens=3 + i, **GREEDY) for i in range(len(ps))]
    solo = Engine(model, None, max_model_len=64, max_num_seqs=8, fast_decode=True, block_size=4)
    ref = [solo.generate([p], sp)[0].output_ids for p, sp in zip(ps, params)]
    engine = Engine(model, None, max_model_len=64, max_num_seqs=8, fast_decode=True, block_size=4,
                    kv_cache_memory=kv_bytes_per_token(model.config, torch.float32) * 4 * 17,
                    max_prefill_layers_during_decode=split)
    assert engine.async_decode
    out = engine.generate(ps + ps, params + params)
    assert [r.output_ids for r in out] == ref + ref
    assert engine.stats["preemptions"] > 0
    assert engine.num_free_blocks == engine.blocks.num_blocks
    engine.blocks.check()


def test_a_grammar_with_no_way_on_fails_its_own_request_only(tiny):
    """An enum value that only byte tokens can spell (a CJK character outside the tiny tokenizer's merges: each byte
    alone is half a character, which the grammar never accepts) dead-ends the JSON constraint; that request ends
    with an error, the request beside it finishes normally."""
    from smollm3.infer.constrain import JSONConstraint

    _, engine = tiny
    ids = engine.tokenizer.encode("漢")
    assert all("\ufffd" in engine.tokenizer.decode([i]) for i in ids)  # no whole-character token for it
    p = prompts([8, 12], engine.config.vocab_size, seed=11)
    stuck = engine.add_request(p[0], SamplingParams(max_tokens=200, **GREEDY),
                               constraint=JSONConstraint({"properties": {"k": {"enum": ["漢"]}}, "required": ["k"]}))
    fine = engine.add_request(p[1], SamplingParams(max_tokens=20, **GREEDY))
    while not (stuck.finished and fine.finished):
        engine.step()
    assert stuck.finish_reason == "error" and "grammar" in stuck.error
    assert fine.finish_reason == "length" and len(fine.output_ids) == 20
