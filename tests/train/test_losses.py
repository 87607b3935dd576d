"""Losses: completion log-prob sums, DPO / APO by hand, float64 gradchecks, TRL parity (the token cross-entropy is an
op: tests/ops/test_cross_entropy.py)."""

import math
import warnings

import pytest
import torch

from smollm3.train.losses import (
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
