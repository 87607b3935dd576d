"""Losses: hand-computed values, float64 gradchecks, chunked == plain cross-entropy, log-prob sums, TRL parity."""

import math
import warnings

import pytest
import torch

from smollm3.train import losses
from smollm3.train.losses import (
    chunked_cross_entropy,
    cross_entropy,
    packed_sequence_logps,
    preference_loss,
    sequence_logps,
    token_logps,
)


def _lse(xs):
    return math.log(sum(math.exp(x) for x in xs))


def _sig(x):
    return 1 / (1 + math.exp(-x))


# ------------------------------------------------------------------------------------------------------------------
# cross-entropy


def test_cross_entropy_by_hand():
    logits = torch.tensor([[[1.0, 2.0, 3.0], [0.5, -1.0, 0.0], [2.0, 2.0, 2.0]]])
    labels = torch.tensor([[2, -100, 0]])
    first, third = _lse([1, 2, 3]) - 3.0, _lse([2, 2, 2]) - 2.0
    assert cross_entropy(logits, labels, reduction="sum").item() == pytest.approx(first + third, rel=1e-6)
    assert cross_entropy(logits, labels).item() == pytest.approx((first + third) / 2, rel=1e-6)
    per_token = cross_entropy(logits, labels, reduction="none")
    assert per_token.shape == (1, 3) and per_token[0, 1] == 0
    assert per_token[0, 0].item() == pytest.approx(first, rel=1e-6)
    # bf16 logits are reduced in fp32
    assert cross_entropy(logits.bfloat16(), labels).dtype == torch.float32


def test_cross_entropy_all_ignored_is_zero_not_nan():
    logits = torch.randn(2, 3, 5, requires_grad=True)
    loss = cross_entropy(logits, torch.full((2, 3), -100))
    loss.backward()
    assert loss.item() == 0 and torch.count_nonzero(logits.grad) == 0


def _head_problem(seed=0, B=2, T=29, D=24, V=61, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, D, generator=g, dtype=dtype)
    weight = (torch.randn(V, D, generator=g) * 0.2).to(dtype)
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[0, :6] = -100  # a masked prompt
    labels[1, -3:] = -100  # padding
    return hidden.requires_grad_(), weight.requires_grad_(), labels


@pytest.fixture(params=["stored", "recomputed"])
def dlogits_path(request, monkeypatch):
    """The backward either uses d nll / d logits kept from the forward or recomputes the logits (too big to keep)."""
    if request.param == "recomputed":
        monkeypatch.setattr(losses, "STORED_DLOGITS_BYTES", 0)
    return request.param


@pytest.mark.parametrize("reduction,chunk", [("mean", 7), ("sum", 7), ("none", 7), ("none", 1), ("none", 4096)])
def test_chunked_cross_entropy_matches_plain_values_and_grads(reduction, chunk, dlogits_path):
    hidden, weight, labels = _head_problem()
    plain = cross_entropy(hidden @ weight.T, labels, reduction=reduction)
    upstream = torch.randn_like(plain)  # a non-uniform upstream gradient exercises the per-token backward
    grads_plain = torch.autograd.grad((plain * upstream).sum(), (hidden, weight))
    chunked = chunked_cross_entropy(hidden, weight, labels, chunk=chunk, reduction=reduction)
    grads_chunked = torch.autograd.grad((chunked * upstream).sum(), (hidden, weight))
    torch.testing.assert_close(chunked, plain, atol=1e-6, rtol=1e-6)
    for a, b in zip(grads_chunked, grads_plain):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    assert torch.count_nonzero(grads_chunked[0][0, :6]) == 0  # ignored rows get no gradient


def test_chunked_cross_entropy_takes_the_counted_positions_from_the_caller():
    """The trainer finds the positions whose label counts on the CPU (no GPU sync); the result is the same."""
    hidden, weight, labels = _head_problem()
    index = (labels.reshape(-1) != -100).nonzero().squeeze(1)
    for reduction in ("none", "mean", "sum"):
        found = chunked_cross_entropy(hidden, weight, labels, chunk=7, reduction=reduction)
        given = chunked_cross_entropy(hidden, weight, labels, chunk=7, reduction=reduction, label_index=index)
        assert torch.equal(found, given)
    assert chunked_cross_entropy(hidden, weight, labels, reduction="mean", label_index=index[:0]) == 0


def test_ignored_positions_in_the_label_index_count_nothing(dlogits_path):
    """CUDA-graphed micro-batches pad the counted positions with ignored ones to a fixed count (train/graphs.py):
    the loss, its mean and both gradients are those of the unpadded index."""
    hidden, weight, labels = _head_problem()
    flat = labels.reshape(-1)
    index = (flat != -100).nonzero().squeeze(1)
    padded = torch.cat([index, (flat == -100).nonzero().squeeze(1)[:4]])
    upstream = torch.randn(labels.shape)
    for reduction in ("none", "mean", "sum"):
        out = [chunked_cross_entropy(hidden, weight, labels, chunk=7, reduction=reduction, label_index=i)
               for i in (index, padded)]
        grads = [torch.autograd.grad((o * (upstream if reduction == "none" else 1)).sum(), (hidden, weight))
                 for o in out]
        torch.testing.assert_close(out[1], out[0], atol=0, rtol=0)
        for a, b in zip(grads[1], grads[0]):
            torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-6)


def test_chunked_cross_entropy_gradcheck_float64(dlogits_path):
    hidden, weight, labels = _head_problem(B=2, T=7, D=5, V=11, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda h, w: chunked_cross_entropy(h, w, labels, chunk=2, reduction="none"), (hidden, weight))


def test_chunked_cross_entropy_bf16_matches_plain_bf16_head(dlogits_path):
    hidden, weight, labels = _head_problem()
    h, w = hidden.detach().bfloat16(), weight.detach().bfloat16()
    plain = cross_entropy(h @ w.T, labels)
    chunked = chunked_cross_entropy(h.requires_grad_(), w.requires_grad_(), labels, chunk=5)
    assert chunked.dtype == torch.float32
    torch.testing.assert_close(chunked, plain, atol=1e-5, rtol=1e-5)
    chunked.backward()
    assert h.grad.dtype == torch.bfloat16 and w.grad.dtype == torch.bfloat16
    h32, w32 = hidden.detach().bfloat16().float().requires_grad_(), weight.detach().bfloat16().float().requires_grad_()
    cross_entropy(h32 @ w32.T, labels).backward()  # the same maths in fp32: bf16 rounding apart, the same gradients
    assert ((h.grad.float() - h32.grad).norm() / h32.grad.norm()) < 2e-2
    assert ((w.grad.float() - w32.grad).norm() / w32.grad.norm()) < 2e-2


def test_chunked_cross_entropy_keeps_no_gradient_state_without_grad(monkeypatch):
    kept = []
    monkeypatch.setattr(losses._ChunkedNLL, "apply", lambda *a: kept.append(a[-1]) or torch.zeros(a[2].shape[0]))
    hidden, weight, labels = _head_problem()
    chunked_cross_entropy(hidden, weight, labels)
    with torch.no_grad():
        chunked_cross_entropy(hidden, weight, labels)
    assert kept == [True, False]


def test_chunked_cross_entropy_all_ignored_and_bad_shapes():
    hidden, weight, _ = _head_problem()
    loss = chunked_cross_entropy(hidden, weight, torch.full(hidden.shape[:-1], -100))
    loss.backward()
    assert loss.item() == 0 and torch.count_nonzero(weight.grad) == 0
    with pytest.raises(ValueError, match=r"weight \(24, 61\) must be \[vocab, 24\]"):
        chunked_cross_entropy(hidden, weight.detach().T, torch.zeros(hidden.shape[:-1], dtype=torch.long))
    with pytest.raises(ValueError, match="labels must have"):
        chunked_cross_entropy(hidden, weight, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="reduction 'avg' is not one of mean, sum, none"):
        cross_entropy(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), reduction="avg")


# ------------------------------------------------------------------------------------------------------------------
# log-probs


def test_sequence_logps_matches_a_loop():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 8, 13, generator=g)
    labels = torch.randint(0, 13, (3, 8), generator=g)
    labels[:, :3] = -100
    labels[2, 6:] = -100
    expected = []
    for b in range(3):
        total = 0.0
        for t in range(8):
            if labels[b, t] != -100:
                row = [float(x) for x in logits[b, t]]
                total += row[int(labels[b, t])] - _lse(row)
        expected.append(total)
    got = sequence_logps(logits, labels)
    assert got.dtype == torch.float32
    assert got.tolist() == pytest.approx(expected, rel=1e-5)
    assert sequence_logps(logits.bfloat16(), labels).dtype == torch.float32


def test_packed_sequence_logps_equals_padded_rows():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(4, 6, 11, generator=g)
    labels = torch.randint(0, 11, (4, 6), generator=g)
    labels[:, :2] = -100  # prompts
    labels[1, 4:] = -100  # padding
    per_row = sequence_logps(logits, labels)
    # pack the four rows into one: every token keeps its row as the segment id, ignored tokens get -1
    packed_lp = token_logps(logits, labels).reshape(1, -1)
    segments = torch.arange(4).repeat_interleave(6).reshape(1, -1).masked_fill(labels.reshape(1, -1) == -100, -1)
    torch.testing.assert_close(packed_sequence_logps(packed_lp, segments), per_row)
    # a trailing segment with no tokens still gets its slot when num_segments says so
    assert packed_sequence_logps(packed_lp, segments, num_segments=6)[4:].tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="one segment id per token"):
        packed_sequence_logps(packed_lp, segments[:, :-1])


# ------------------------------------------------------------------------------------------------------------------
# preference losses

PC, PR, RC, RR = [-5.0, -3.0, -9.5], [-7.0, -2.0, -8.0], [-6.0, -3.5, -9.0], [-6.5, -2.5, -11.0]


def _pairs(dtype=torch.float32, grad=False):
    return [torch.tensor(x, dtype=dtype, requires_grad=grad) for x in (PC, PR, RC, RR)]


@pytest.mark.parametrize("loss_type,beta,eps", [("sigmoid", 0.1, 0.0), ("sigmoid", 0.5, 0.2), ("apo_zero", 0.05, 0.0),
                                                ("apo_down", 0.3, 0.0)])
def test_preference_loss_by_hand(loss_type, beta, eps):
    per_pair = []
    for pc, pr, rc, rr in zip(PC, PR, RC, RR):
        dw, dl = pc - rc, pr - rr
        if loss_type == "sigmoid":
            z = beta * (dw - dl)
            per_pair.append(-math.log(_sig(z)) * (1 - eps) - math.log(_sig(-z)) * eps)
        elif loss_type == "apo_zero":
            per_pair.append((1 - _sig(beta * dw)) + _sig(beta * dl))
        else:
            per_pair.append(_sig(beta * dw) + (1 - _sig(beta * (dw - dl))))
    loss, chosen_rewards, rejected_rewards = preference_loss(*_pairs(grad=True), loss_type=loss_type, beta=beta,
                                                             label_smoothing=eps)
    assert loss.item() == pytest.approx(sum(per_pair) / 3, rel=1e-6)
    assert chosen_rewards.tolist() == pytest.approx([beta * (a - b) for a, b in zip(PC, RC)], rel=1e-6)
    assert rejected_rewards.tolist() == pytest.approx([beta * (a - b) for a, b in zip(PR, RR)], rel=1e-6)
    assert not chosen_rewards.requires_grad and loss.requires_grad


@pytest.mark.parametrize("loss_type,eps", [("sigmoid", 0.1), ("apo_zero", 0.0), ("apo_down", 0.0)])
def test_preference_loss_gradcheck_float64(loss_type, eps):
    assert torch.autograd.gradcheck(
        lambda *x: preference_loss(*x, loss_type=loss_type, beta=0.3, label_smoothing=eps)[0],
        tuple(_pairs(torch.float64, grad=True)))


def test_preference_loss_rejects_bad_arguments():
    pairs = _pairs()
    with pytest.raises(ValueError, match="unknown preference loss_type 'ipo'; valid: sigmoid, apo_zero, apo_down"):
        preference_loss(*pairs, loss_type="ipo")
    with pytest.raises(ValueError, match="label_smoothing applies only to loss_type 'sigmoid'"):
        preference_loss(*pairs, loss_type="apo_zero", label_smoothing=0.1)
    with pytest.raises(ValueError, match="beta must be > 0"):
        preference_loss(*pairs, beta=0.0)
    with pytest.raises(ValueError, match="share one shape"):
        preference_loss(pairs[0], pairs[1][:2], pairs[2], pairs[3])


# ------------------------------------------------------------------------------------------------------------------
# parity with TRL's DPOTrainer (skipped where trl is not installed; CI has none)


def _trl_setup():
    pytest.importorskip("trl")
    transformers = pytest.importorskip("transformers")
    from datasets import Dataset
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"t{i}": i for i in range(40)} | {"<pad>": 40, "<eos>": 41}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")
    # a wide init so the policy and the reference disagree by whole nats, far from the losses' linear regime
    cfg = transformers.SmolLM3Config(vocab_size=42, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                     pad_token_id=40, eos_token_id=41, bos_token_id=None, initializer_range=0.3)
    models_ = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        models_.append(transformers.SmolLM3ForCausalLM(cfg).float())
    data = Dataset.from_dict({"prompt": ["t1 t2 t3", "t4 t5", "t6 t7 t8 t9", "t10"],
                              "chosen": [" t11 t12", " t13", " t14 t15 t16", " t17 t18 t19 t20 t21"],
                              "rejected": [" t22", " t23 t24 t25", " t26 t27", " t28 t29"]})
    return models_, data, tokenizer


@pytest.mark.filterwarnings("ignore::FutureWarning")  # transformers' deprecations inside TRL's config
@pytest.mark.parametrize("loss_type,beta", [("sigmoid", 0.1), ("apo_zero", 0.05), ("apo_down", 0.5)])
def test_matches_trl_dpo_trainer(loss_type, beta, tmp_path):
    (policy, ref), data, tokenizer = _trl_setup()
    import trl

    args = trl.DPOConfig(output_dir=str(tmp_path), loss_type=[loss_type], beta=beta, report_to=[], use_cpu=True,
                         bf16=False, gradient_checkpointing=False, disable_tqdm=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = trl.DPOTrainer(model=policy, ref_model=ref, args=args, train_dataset=data,
                                 processing_class=tokenizer)
        batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(data))])
        trl_loss = trainer.compute_loss(trainer.model, batch).item()
    logged = {k: v[-1] for k, v in trainer._metrics["train"].items()}

    # ours, from the same models' plain logits: TRL batches [chosen..., rejected...]
    ids, completion = batch["input_ids"], batch["completion_mask"]
    labels = ids[:, 1:].masked_fill(completion[:, 1:] == 0, -100)
    with torch.no_grad():
        policy_lp = sequence_logps(policy(input_ids=ids, attention_mask=batch["attention_mask"]).logits[:, :-1], labels)
        ref_lp = sequence_logps(ref(input_ids=ids, attention_mask=batch["attention_mask"]).logits[:, :-1], labels)
    n = len(data)
    loss, chosen_rewards, rejected_rewards = preference_loss(policy_lp[:n], policy_lp[n:], ref_lp[:n], ref_lp[n:],
                                                             loss_type=loss_type, beta=beta)
    diffs = {"loss": abs(loss.item() - trl_loss),
             "logps/chosen": abs(policy_lp[:n].mean().item() - logged["logps/chosen"]),
             "logps/rejected": abs(policy_lp[n:].mean().item() - logged["logps/rejected"]),
             "rewards/chosen": abs(chosen_rewards.mean().item() - logged["rewards/chosen"]),
             "rewards/rejected": abs(rejected_rewards.mean().item() - logged["rewards/rejected"])}
    print(f"\nTRL {trl.__version__} {loss_type} beta={beta}: loss ours {loss.item():.8f} trl {trl_loss:.8f}; "
          + ", ".join(f"|Δ| {k} {v:.3g}" for k, v in diffs.items()))
    assert abs(logged["rewards/chosen"] - logged["rewards/rejected"]) > 0.05  # the case is not degenerate
    assert diffs["loss"] <= 1e-6
    assert max(diffs[k] for k in ("logps/chosen", "logps/rejected")) <= 1e-4  # sums of ~4 fp32 token log-probs
    assert max(diffs[k] for k in ("rewards/chosen", "rewards/rejected")) <= 1e-5


@pytest.mark.parametrize("vocab", [61, 4096, 128_256 + 7])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_ce_kernel_matches_the_eager_maths(vocab, dtype):
    from smollm3.train import ce_kernel

    g = torch.Generator(device="cuda").manual_seed(0)
    logits = (torch.randn(37, vocab, device="cuda", generator=g) * 4).to(dtype)
    targets = torch.randint(0, vocab, (37,), device="cuda", generator=g)
    grad = torch.randn(37, device="cuda", generator=g)
    lse, nll = torch.empty(37, device="cuda"), torch.empty(37, device="cuda")
    dlogits = torch.empty_like(logits)
    ce_kernel.lse_nll(logits, targets, lse, nll, dlogits)
    want_lse, want_nll = losses._lse_nll(logits, targets)
    torch.testing.assert_close(lse, want_lse, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(nll, want_nll, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dlogits, losses._dlogits(logits, want_lse, targets))
    torch.testing.assert_close(ce_kernel.dlogits(logits, lse, targets, grad),
                               losses._dlogits(logits, want_lse, targets, grad))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_chunked_cross_entropy_on_the_gpu_matches_plain(dlogits_path):
    hidden, weight, labels = _head_problem(V=300)
    hidden, weight = (t.detach().cuda().requires_grad_() for t in (hidden, weight))
    labels = labels.cuda()
    plain = cross_entropy(hidden @ weight.T, labels, reduction="none")
    upstream = torch.randn_like(plain)
    want = torch.autograd.grad((plain * upstream).sum(), (hidden, weight))
    chunked = chunked_cross_entropy(hidden, weight, labels, chunk=7, reduction="none")
    got = torch.autograd.grad((chunked * upstream).sum(), (hidden, weight))
    torch.testing.assert_close(chunked, plain, atol=1e-5, rtol=1e-5)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
