"""Batched sampling: the exponential race draws from the right distribution, filters keep the right tokens, the
repetition penalty is transformers' own, and parameters are checked."""

from types import SimpleNamespace

import pytest
import torch

from smollm3.infer.sampling import (SamplingParams, apply_repetition_penalty, generation_defaults, plain_greedy,
                                   sampling_scores, stop_token_ids, token_logprobs)

PROBS = torch.tensor([0.5, 0.3, 0.15, 0.05])


def draw(n, **kw):
    """n independent draws from PROBS (one row each), with per-row params."""
    torch.manual_seed(0)
    params = [SamplingParams(**{"temperature": 1.0, "top_p": 1.0, "top_k": 0, **kw})] * n
    scores = sampling_scores(PROBS.log().expand(n, -1), params, [None] * n)
    return torch.bincount(scores.argmax(-1), minlength=4).float() / n


def test_exponential_race_samples_the_distribution():
    torch.testing.assert_close(draw(40000), PROBS, atol=0.01, rtol=0)


@pytest.mark.parametrize("kw, expected", [
    ({"top_p": 0.7}, [0.5 / 0.8, 0.3 / 0.8, 0, 0]),  # mass before the 3rd token is 0.8 >= 0.7: it is dropped
    ({"top_k": 2}, [0.5 / 0.8, 0.3 / 0.8, 0, 0]),
    ({"min_p": 0.25}, [0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0]),  # keeps p >= 0.25 * 0.5
    ({"top_k": 1}, [1.0, 0, 0, 0]),
    ({"temperature": 0.5}, (PROBS**2 / (PROBS**2).sum()).tolist()),
])
def test_filters(kw, expected):
    torch.testing.assert_close(draw(20000, **kw), torch.tensor(expected), atol=0.015, rtol=0)


def test_greedy_rows_mix_with_sampled_rows_and_seeds_are_per_row():
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(1))
    params = [SamplingParams(temperature=0.0, top_p=1.0, top_k=0), SamplingParams(temperature=1.0, top_p=1.0,
                                                                                   top_k=0, seed=5)] * 2
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    a = sampling_scores(logits[[0, 1]], params[:2], [None, g1]).argmax(-1)
    b = sampling_scores(logits[[2, 1]], params[2:], [None, g2]).argmax(-1)  # another batch, same seeded row
    assert a[0] == logits[0].argmax() and b[0] == logits[2].argmax()
    assert a[1] == b[1]


def test_repetition_penalty_matches_transformers():
    transformers = pytest.importorskip("transformers")
    logits = torch.randn(2, 30, generator=torch.Generator().manual_seed(2))
    ids = torch.tensor([[1, 5, 5, 7], [0, 29, 3, 3]])
    seen = torch.zeros(2, 30, dtype=torch.bool).scatter_(1, ids, True)
    ours = apply_repetition_penalty(logits, seen, torch.tensor([1.3, 1.3]))
    theirs = transformers.RepetitionPenaltyLogitsProcessor(1.3)(ids, logits.clone())
    torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("kw, name", [
    ({"max_tokens": 0}, "max_tokens"), ({"temperature": -1}, "temperature"), ({"top_p": 0}, "top_p"),
    ({"top_p": 1.5}, "top_p"), ({"top_k": -2}, "top_k"), ({"min_p": 2}, "min_p"),
    ({"repetition_penalty": 0}, "repetition_penalty"), ({"stop": [""]}, "stop"),
    ({"stop_token_ids": [-1]}, "stop_token_ids"), ({"presence_penalty": 2.5}, "presence_penalty"),
    ({"frequency_penalty": -3}, "frequency_penalty"), ({"logit_bias": {5: 101}}, "logit_bias"),
    ({"logit_bias": {-1: 1}}, "logit_bias"), ({"logprobs": 21}, "logprobs"),
])
def test_bad_params_name_the_field(kw, name):
    with pytest.raises(ValueError, match=name):
        SamplingParams(**kw).resolve({})


def test_defaults_from_generation_config():
    assert generation_defaults({}) == {"temperature": 0.6, "top_p": 0.95}  # SmolLM3's recommendation
    assert generation_defaults({"temperature": 0.3, "top_k": 20}) == {"temperature": 0.3, "top_p": 0.95, "top_k": 20}
    assert generation_defaults({"do_sample": False})["temperature"] == 0.0
    p = SamplingParams(top_p=0.5).resolve(generation_defaults({"temperature": 0.3}))
    assert (p.temperature, p.top_p, p.top_k) == (0.3, 0.5, 0)


def test_stop_ids_from_generation_config_then_config_then_tokenizer():
    config, tokenizer = SimpleNamespace(eos_token_id=2), SimpleNamespace(eos_token_id=7)
    assert stop_token_ids(config, tokenizer, {}) == [2, 7]
    assert stop_token_ids(config, tokenizer, {"eos_token_id": [128012, 7, None]}) == [128012, 7]  # a list, no repeats
    assert stop_token_ids(config, None, {"eos_token_id": 5}) == [5]
    assert stop_token_ids(SimpleNamespace(eos_token_id=None), None, {}) == []


def test_presence_frequency_penalties_and_logit_bias_follow_openai():
    """logit -= presence * (count > 0) + frequency * count over the output only, then the bias is added."""
    logits = torch.randn(2, 10, generator=torch.Generator().manual_seed(3))
    params = [SamplingParams(temperature=0.0, presence_penalty=0.5, frequency_penalty=0.25, logit_bias={9: -100}),
              SamplingParams(temperature=0.0, logit_bias={2: 7.5})]
    prompts, outputs = [[1, 1, 4], [3]], [[2, 2, 2, 5], [3, 3]]
    scores = sampling_scores(logits, params, [None, None], prompts, outputs)
    expected = logits.clone()
    expected[0, 2] -= 0.5 + 0.25 * 3
    expected[0, 5] -= 0.5 + 0.25
    expected[0, 9] -= 100  # prompt tokens 1 and 4 are not penalised: the penalties read the output only
    expected[1, 2] += 7.5
    torch.testing.assert_close(scores, expected)
    assert logits[0, 9] != scores[0, 9]  # the caller's logits stay raw (logprobs read them)
    with pytest.raises(ValueError, match="prompt and output"):
        sampling_scores(logits, params, [None, None])
    assert not plain_greedy(params[1]) and plain_greedy(SamplingParams(temperature=0.0))
    assert not plain_greedy(SamplingParams(temperature=0.0, logprobs=0))


def test_token_logprobs_are_the_raw_log_softmax():
    logits = torch.randn(3, 40, generator=torch.Generator().manual_seed(4))
    lp = logits.log_softmax(-1)
    got = token_logprobs(logits, [5, 0, 39], [3, 0, 40])
    for row, (token, k) in enumerate([(5, 3), (0, 0), (39, 40)]):
        chosen, top = got[row]
        assert chosen == pytest.approx(lp[row, token].item(), abs=1e-6)
        assert [i for i, _ in top] == lp[row].argsort(descending=True)[:k].tolist()
        assert [v for _, v in top] == sorted((v for _, v in top), reverse=True)
