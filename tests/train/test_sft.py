"""SFT end to end on CPU: conversations -> SmolLM3 template -> BFD packing with assistant-only labels -> `train` ->
greedy generation. Held-out accuracy goes from ~0 to >= 90%, and no system or user token ever carries loss."""

import json
import random

import pytest
import torch
import yaml

from smollm3.chat import render_chat
from smollm3.generate import generate
from smollm3.tokenizer import load_tokenizer, train_tokenizer
from smollm3.train.config import load_train_config
from smollm3.train.trainer import build_model_for, train


def parity_chat(n: int) -> dict:
    # /system_override keeps the system turn to its two tags, so sequences stay short for a CPU test
    return {"messages": [{"role": "system", "content": "/system_override"},
                         {"role": "user", "content": f"even or odd: {n}"},
                         {"role": "assistant", "content": "odd" if n % 2 else "even"}]}


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("sft")
    rng = random.Random(0)
    numbers = rng.sample(range(10, 100_000), 2050)
    train_set, held_out = [parity_chat(n) for n in numbers[:2000]], [parity_chat(n) for n in numbers[2000:]]
    (root / "train.jsonl").write_text("".join(json.dumps(c) + "\n" for c in train_set))
    (root / "text.txt").write_text("\n".join(m["role"] + "\n" + m["content"] for c in train_set[:500]
                                             for m in c["messages"]))
    tok = train_tokenizer([str(root / "text.txt")], 600, root / "tok", show_progress=False)
    cfg = {"out_dir": str(root / "run"),
           "model": {"preset": "tiny", "overrides": {"vocab_size": tok.vocab_size, "num_hidden_layers": 2}},
           "data": {"kind": "sft", "tokenizer": str(root / "tok"), "seq_len": 128, "paths": [str(root / "train.jsonl")]},
           "train": {"objective": "sft", "steps": 150, "micro_batch": 6, "grad_accum": 1, "dtype": "float32"},
           "optim": {"lr": 3e-3, "warmup_steps": 10, "schedule": "cosine", "min_lr_ratio": 0.1, "weight_decay": 0.0},
           "checkpoint": {"every": 150, "keep": 1}, "log": {"every": 10, "tensorboard": False}}
    (root / "sft.yaml").write_text(yaml.safe_dump(cfg))
    config = load_train_config(root / "sft.yaml")
    untrained, _ = build_model_for(config)
    train(config)
    from smollm3 import load_pretrained

    trained = load_pretrained(root / "run" / "checkpoints" / "step_00000150" / "hf", dtype=torch.float32)
    return {"tok": load_tokenizer(root / "tok"), "held_out": held_out, "untrained": untrained.eval(),
            "trained": trained, "config": config}


def accuracy(model, tok, chats) -> float:
    end = tok.token_to_id("<|im_end|>")
    right = 0
    for c in chats:
        prompt = tok.encode(render_chat(c["messages"][:2], add_generation_prompt=True))
        out = generate(model, prompt, 4, temperature=0, stop_ids=[end])
        right += tok.decode([t for t in out if t != end]).strip() == c["messages"][2]["content"]
    return right / len(chats)


def test_sft_takes_held_out_accuracy_from_zero_to_90(sft_run):
    assert accuracy(sft_run["untrained"], sft_run["tok"], sft_run["held_out"]) <= 0.1
    assert accuracy(sft_run["trained"], sft_run["tok"], sft_run["held_out"]) >= 0.9


def test_no_system_or_user_token_carries_loss(sft_run):
    """Walk every packed row the trainer saw: each labelled target must lie in an assistant turn."""
    from smollm3.data.sft import SFTLoader

    cfg, tok = sft_run["config"], sft_run["tok"]
    loader = SFTLoader(cfg.data.paths, tok, cfg.data.seq_len, 1)
    start, newline = tok.token_to_id("<|im_start|>"), tok.encode("\n")
    trained_targets = 0
    for row in loader.rows:
        ids, labels = row.input_ids.tolist(), row.labels.tolist()
        role, roles = None, []
        for t, i in enumerate(ids):  # the role of each token: the header text after the latest <|im_start|>
            if i == start:
                end = next(k for k in range(t + 1, len(ids)) if ids[k:k + len(newline)] == newline)
                role = tok.decode(ids[t + 1:end])
            roles.append(role)
        for t, label in enumerate(labels):
            if label != -100:
                assert label == ids[t + 1] and roles[t + 1] == "assistant", (t, tok.decode(ids[:t + 2]))
                trained_targets += 1
    assert trained_targets > 0
    assert {r for r in roles if r} == {"system", "user", "assistant"}
