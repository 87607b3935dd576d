"""HF directory IO (sharding, atomic writes), GGUF import, and the errors bad checkpoints get."""

import json

import numpy as np
import pytest
import torch

from smollm3 import ModelConfig, build_model, load_pretrained, save_pretrained
from smollm3.checkpoint import CheckpointError
from smollm3.config import ConfigError, config_from_dict
from smollm3.gguf_io import GGUFError

TINY = dict(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=128, rope_theta=10_000.0, dtype="float32",
            bos_token_id=1, eos_token_id=2, pad_token_id=0)


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return build_model(ModelConfig(**TINY)).eval()


def logits(model, T=24):
    x = torch.arange(T)[None] % model.config.vocab_size
    with torch.no_grad():
        return model(x)


def test_sharded_checkpoint_round_trips_and_loads_in_transformers(tiny, tmp_path):
    transformers = pytest.importorskip("transformers")
    save_pretrained(tiny, tmp_path / "m", max_shard_bytes=60_000)
    files = sorted(p.name for p in (tmp_path / "m").iterdir())
    index = json.loads((tmp_path / "m" / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and all(s in files for s in shards)
    assert "lm_head.weight" not in index["weight_map"]  # tied: stored once, as HF does
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["model_type"] == "smollm3" and cfg["architectures"] == ["SmolLM3ForCausalLM"]
    assert torch.equal(logits(load_pretrained(tmp_path / "m")), logits(tiny))
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "m", dtype=torch.float32).eval()
    with torch.no_grad():
        ref = theirs(torch.arange(24)[None]).logits
    assert (ref - logits(tiny)).abs().max() <= 1e-4


def test_save_is_atomic_on_failure(tiny, tmp_path):
    out = tmp_path / "m"
    save_pretrained(tiny, out)
    before = (out / "model.safetensors").read_bytes()

    class Boom:
        def save(self, d):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        save_pretrained(tiny, out, tokenizer=Boom())
    assert (out / "model.safetensors").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no temporary directory left behind


def test_bf16_save_keeps_dtype(tiny, tmp_path):
    save_pretrained(tiny, tmp_path, dtype=torch.bfloat16)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["dtype"] == cfg["torch_dtype"] == "bfloat16"
    assert next(load_pretrained(tmp_path).parameters()).dtype == torch.bfloat16
    assert next(load_pretrained(tmp_path, dtype="float32").parameters()).dtype == torch.float32


# ---- errors, each caught before compute with the problem named


def test_missing_path():
    with pytest.raises(FileNotFoundError, match="no such file or directory"):
        load_pretrained("/nonexistent/model")


def test_a_training_checkpoint_given_as_a_model_names_its_export(tiny, tmp_path):
    run = tmp_path / "run"
    save_pretrained(tiny, run / "checkpoints" / "step_00000450" / "hf")
    with pytest.raises(CheckpointError, match=r"training run; its latest model is .*step_00000450/hf"):
        load_pretrained(run)
    with pytest.raises(CheckpointError, match=r"training checkpoint; its model is .*step_00000450/hf"):
        load_pretrained(run / "checkpoints" / "step_00000450")
    with pytest.raises(CheckpointError, match="Hugging Face model directory"):
        load_pretrained(tmp_path)


def test_unknown_config_key(tiny, tmp_path):
    save_pretrained(tiny, tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    raw["num_hiden_layers"] = 4
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match=r"'num_hiden_layers' \(did you mean 'num_hidden_layers'\?\)"):
        load_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="did you mean 'hidden_size'"):
        config_from_dict({"preset": "tiny", "hiden_size": 32})


def test_unsupported_architecture_features(tiny, tmp_path):
    save_pretrained(tiny, tmp_path)
    for key, value, msg in [("model_type", "mistral", "model_type 'mistral' is not supported"),
                            ("attention_bias", True, "attention_bias=True is not supported"),
                            ("rope_parameters", {"rope_type": "llama3", "factor": 8.0}, "type 'llama3'")]:
        raw = json.loads((tmp_path / "config.json").read_text())
        raw[key] = value
        (tmp_path / "config.json").write_text(json.dumps(raw))
        with pytest.raises(ConfigError, match=msg):
            load_pretrained(tmp_path)
        save_pretrained(tiny, tmp_path)


def test_missing_and_misshaped_tensors(tiny, tmp_path):
    from safetensors.torch import load_file, save_file

    save_pretrained(tiny, tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    del state["model.layers.2.mlp.up_proj.weight"]
    state["model.layers.0.self_attn.q_proj.weight"] = torch.zeros(8, 8)
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError) as e:
        load_pretrained(tmp_path)
    assert "missing 1 tensor(s): model.layers.2.mlp.up_proj.weight" in str(e.value)
    assert "model.layers.0.self_attn.q_proj.weight: checkpoint (8, 8) vs model (64, 64)" in str(e.value)


def test_corrupt_shard(tiny, tmp_path):
    save_pretrained(tiny, tmp_path)
    f = tmp_path / "model.safetensors"
    f.write_bytes(f.read_bytes()[: 5000])
    with pytest.raises(CheckpointError, match="unreadable safetensors shard"):
        load_pretrained(tmp_path)


def test_bad_config_values():
    with pytest.raises(ConfigError, match="multiple of num_key_value_heads"):
        ModelConfig(**{**TINY, "num_key_value_heads": 3})
    with pytest.raises(ConfigError, match="no_rope_layers must hold a 0 or 1"):
        ModelConfig(**{**TINY, "no_rope_layers": [1, 0]})
    with pytest.raises(ConfigError, match="outside the vocabulary"):
        ModelConfig(**{**TINY, "eos_token_id": 999})


# ---- GGUF


def write_gguf(path, model: torch.nn.Module, arch: str):
    """Write `model` as llama.cpp's converter would: GGUF names, q/k rows permuted for interleaved RoPE, F32."""
    gguf = pytest.importorskip("gguf")
    cfg = model.config
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_uint32(f"{arch}.vocab_size", cfg.vocab_size)

    def permute(x, n_head):
        return x.reshape(n_head, 2, x.shape[0] // n_head // 2, x.shape[1]).swapaxes(1, 2).reshape(x.shape)

    names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    for name, p in model.state_dict().items():
        a = p.float().numpy().copy()
        if name == "model.embed_tokens.weight":
            w.add_tensor("token_embd.weight", a)
        elif name == "model.norm.weight":
            w.add_tensor("output_norm.weight", a)
        elif name.startswith("model.layers."):
            i, rest = name.split(".")[2], ".".join(name.split(".")[3:-1])
            if rest == "self_attn.q_proj":
                a = permute(a, cfg.num_attention_heads)
            elif rest == "self_attn.k_proj":
                a = permute(a, cfg.num_key_value_heads)
            w.add_tensor(f"blk.{i}.{names[rest]}.weight", a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize("arch", ["llama", "smollm3"])
def test_gguf_import_undoes_the_rope_permutation(arch, tmp_path):
    interval = 4 if arch == "smollm3" else 100  # llama.cpp: NoPE every 4th layer for smollm3, none for llama
    torch.manual_seed(1)
    model = build_model(ModelConfig(**{**TINY, "no_rope_layer_interval": interval})).eval()
    write_gguf(tmp_path / "m.gguf", model, arch)
    loaded = load_pretrained(tmp_path / "m.gguf")
    assert loaded.config.no_rope_layers == model.config.no_rope_layers
    assert torch.equal(logits(loaded), logits(model))


def test_gguf_of_another_architecture_is_refused(tiny, tmp_path):
    write_gguf(tmp_path / "g.gguf", tiny, "gemma3")
    with pytest.raises(GGUFError, match="architecture 'gemma3' is not supported; supported: llama, smollm3"):
        load_pretrained(tmp_path / "g.gguf")


def test_not_a_gguf(tmp_path):
    (tmp_path / "x.gguf").write_bytes(np.arange(100, dtype=np.uint8).tobytes())
    with pytest.raises(GGUFError, match="not a readable GGUF file"):
        load_pretrained(tmp_path / "x.gguf")
