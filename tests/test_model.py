"""The model against transformers' SmolLM3ForCausalLM (random weights, fp32 CPU), loaded both ways, and the
intra-document masking contract."""

import pytest
import random_weights
import torch

from smollm3 import ModelConfig, build_model, load_pretrained, save_pretrained
from smollm3.checkpoint import with_settings
from smollm3.model import KVCache
from smollm3.ops.attention import DocumentMask
from smollm3.ops.settings import OpSettings

transformers = pytest.importorskip("transformers")

TOL = 1e-4

# three tiny shapes: the default NoPE rule, a hand-written NoPE layout, and YaRN beyond the original context
PARITY_CASES = {
    "nope-interval-4": dict(num_hidden_layers=8, no_rope_layer_interval=4, max_position_embeddings=256),
    "custom-no-rope-layers": dict(num_hidden_layers=6, no_rope_layers=[0, 1, 1, 0, 1, 0], max_position_embeddings=256),
    "yarn-x2": dict(num_hidden_layers=4, max_position_embeddings=128,
                    rope_scaling={"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 64}),
}
BASE = dict(vocab_size=320, hidden_size=64, intermediate_size=112, num_attention_heads=4, num_key_value_heads=2,
            rope_theta=10_000.0, rms_norm_eps=1e-6, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
            pad_token_id=0)


def hf_config(case: dict):
    kw = {**BASE, **case}
    scaling = kw.pop("rope_scaling", None)
    kw["rope_parameters"] = {"rope_type": "default", "rope_theta": kw.pop("rope_theta")}
    if scaling:
        kw["rope_parameters"].update(scaling)
    return transformers.SmolLM3Config(**kw)


def randomise_(model, seed=0):
    """Larger-than-init random weights (norms included), so that a mis-roped layer moves logits well past TOL."""
    return random_weights.randomise_(model, seed, scale=0.08)


def tokens(T, vocab=320, seed=1, B=2):
    return torch.randint(0, vocab, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("case", PARITY_CASES)
def test_parity_hf_to_ours(case, tmp_path):
    theirs = transformers.SmolLM3ForCausalLM(hf_config(PARITY_CASES[case])).eval()
    randomise_(theirs)
    theirs.save_pretrained(tmp_path)
    ours = load_pretrained(tmp_path, dtype=torch.float32)
    x = tokens(ours.config.max_position_embeddings)  # YaRN case: 128 positions, twice the original 64
    with torch.no_grad():
        ref = theirs(x).logits
        out = ours(x)
    assert (out - ref).abs().max() <= TOL
    # negative control: the same weights with RoPE on every layer must disagree (the NoPE/YaRN path matters)
    ours.config.no_rope_layers = [1] * ours.config.num_hidden_layers
    for layer in ours.model.layers:
        layer.self_attn.use_rope = True
    if case == "yarn-x2":
        ours.config.rope_scaling = None
        ours.model.rotary_emb.reset_parameters()
    with torch.no_grad():
        assert (ours(x) - ref).abs().max() > 100 * TOL


@pytest.mark.parametrize("case", PARITY_CASES)
def test_parity_ours_to_hf(case, tmp_path):
    cfg = ModelConfig(**{**BASE, **PARITY_CASES[case], "dtype": "float32"})
    ours = build_model(cfg)
    randomise_(ours, seed=3)
    save_pretrained(ours, tmp_path)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert type(theirs).__name__ == "SmolLM3ForCausalLM"
    assert theirs.config.no_rope_layers == cfg.no_rope_layers
    x = tokens(cfg.max_position_embeddings, seed=4)
    with torch.no_grad():
        assert (ours.eval()(x) - theirs(x).logits).abs().max() <= TOL


def test_reads_transformers_v4_spelling(tmp_path):
    """config.json as transformers 4.53-4.57 wrote it: rope_theta / rope_scaling{type} / torch_dtype."""
    import json

    cfg = ModelConfig(**{**BASE, **PARITY_CASES["yarn-x2"], "dtype": "float32"})
    model = build_model(cfg)
    save_pretrained(model, tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    del raw["rope_parameters"], raw["dtype"]
    raw["rope_scaling"] = {"type": "yarn", "factor": 2.0, "original_max_position_embeddings": 64}
    (tmp_path / "config.json").write_text(json.dumps(raw))
    loaded = load_pretrained(tmp_path)
    assert loaded.config.rope_scaling["rope_type"] == "yarn" and loaded.config.dtype == "float32"
    x = tokens(128)
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))


def pack(docs):
    ids = torch.cat(docs)
    pos = torch.cat([torch.arange(len(d)) for d in docs])
    return ids[None], pos[None]


@pytest.mark.parametrize("layout", ["nope-interval-4", "yarn-x2"])
def test_packed_documents_equal_documents_alone(layout):
    cfg = ModelConfig(**{**BASE, **PARITY_CASES[layout], "dtype": "float32"})
    model = build_model(cfg).eval()
    randomise_(model)
    g = torch.Generator().manual_seed(7)
    docs = [torch.randint(0, cfg.vocab_size, (n,), generator=g) for n in (37, 5, 86)]
    ids, pos = pack(docs)
    with torch.no_grad():
        packed = model(ids, position_ids=pos)[0]
        alone = torch.cat([model(d[None])[0] for d in docs])
        assert (packed - alone).abs().max() <= 1e-5
        # without positions the documents see each other: the mask is what makes them equal
        assert (model(ids)[0] - alone).abs().max() > 1e-3


def test_document_mask_boundaries_and_batch_rows():
    pos = torch.tensor([[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 4, 5]])
    doc = DocumentMask.from_position_ids(pos)
    assert doc.doc_ids.tolist() == [[0, 0, 0, 1, 1, 2], [3, 3, 3, 3, 3, 3]]
    # 4 documents, then empty ones up to a power-of-two length (one compiled shape per bucket of document counts)
    assert doc.cu_seqlens.tolist() == [0, 3, 5, 6, 12, 12, 12, 12] and doc.max_seqlen == 6
    assert DocumentMask.from_position_ids(pos[1:]).cu_seqlens.tolist() == [0, 6, 6, 6]
    # one document a row (the cudnn backend's plain causal attention is exact) only where no row packs two
    assert not doc.whole_rows and DocumentMask.from_position_ids(pos[1:]).whole_rows
    assert DocumentMask.from_position_ids(torch.arange(6).expand(3, 6)).whole_rows
    dense = doc.dense()[0, 0]
    assert dense[4].tolist() == [False, False, False, True, True, False]


def test_a_document_mask_given_beforehand_is_the_one_used():
    """The trainer builds the mask on the CPU and passes it in; the model must use it, not re-derive one."""
    cfg = ModelConfig(**{**BASE, "dtype": "float32"})
    model = build_model(cfg).eval()
    ids = torch.randint(0, cfg.vocab_size, (1, 8), generator=torch.Generator().manual_seed(0))
    pos = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 3]])
    derived = model(ids, position_ids=pos)
    given = model(ids, position_ids=pos, document_mask=DocumentMask.from_position_ids(pos))
    assert torch.equal(derived, given)
    one_doc = DocumentMask.from_position_ids(torch.arange(8)[None])  # a mask that lets the halves see each other
    assert (model(ids, position_ids=pos, document_mask=one_doc) - derived).abs().max() > 1e-4


def test_kv_cache_matches_full_forward():
    cfg = ModelConfig(**{**BASE, **PARITY_CASES["nope-interval-4"], "dtype": "float32"})
    model = build_model(cfg).eval()
    randomise_(model)
    x = tokens(40, B=1)
    with torch.no_grad():
        full = model(x)
        cache = KVCache(cfg, 1, 64, "cpu", torch.float32)
        steps = [model(x[:, :25], cache=cache)] + [model(x[:, t:t + 1], cache=cache) for t in range(25, 32)]
        steps.append(model(x[:, 32:], cache=cache))  # a multi-token chunk after decode steps (offset causal mask)
        assert (torch.cat(steps, 1) - full).abs().max() <= 1e-5


def test_init_matches_recipe():
    cfg = ModelConfig(vocab_size=4096, hidden_size=256, intermediate_size=1024, num_hidden_layers=8,
                      num_attention_heads=4, num_key_value_heads=2, dtype="float32")
    model = build_model(cfg)  # built on the meta device, materialised, then init_weights()
    out_std = 0.02 / (2 * 8) ** 0.5
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            assert torch.all(p == 1)
        elif name.endswith(("o_proj.weight", "down_proj.weight")):
            assert abs(p.std().item() - out_std) < 0.1 * out_std, name
        else:
            assert abs(p.std().item() - 0.02) < 0.002 and abs(p.mean().item()) < 1e-3, name
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_3b_preset_has_the_published_parameter_count():
    from smollm3 import preset

    cfg = preset("smollm3-3b")
    assert cfg.num_params() == 3_075_098_624
    assert cfg.nope_layer_indices == [3, 7, 11, 15, 19, 23, 27, 31, 35]
    with torch.device("meta"):
        from smollm3.model import SmolLM3ForCausalLM

        assert SmolLM3ForCausalLM(cfg).num_params() == 3_075_098_624
    assert 120e6 < preset("smollm3-135m").num_params() < 150e6
    assert 330e6 < preset("smollm3-360m").num_params() < 380e6


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("backend", ["sdpa", "flex", "varlen"])
def test_packed_documents_every_gpu_backend(backend):
    from smollm3.ops.attention import _varlen_impl

    if backend == "varlen" and _varlen_impl() is None:
        pytest.skip("no varlen kernel (torch.nn.attention.varlen or flash-attn)")
    # packed rows against the fp32 model's documents alone; the flash kernels need bf16/fp16
    cfg = ModelConfig(**{**BASE, **PARITY_CASES["nope-interval-4"], "dtype": "float32", "head_dim": 64,
                         "hidden_size": 256, "num_attention_heads": 4})
    model = build_model(cfg, device="cuda").eval()
    randomise_(model)
    g = torch.Generator().manual_seed(7)
    docs = [torch.randint(0, cfg.vocab_size, (n,), generator=g).cuda() for n in (37, 5, 86)]
    ids, pos = pack(docs)
    with torch.no_grad():
        alone = torch.cat([model(d[None])[0] for d in docs]).float()  # auto: sdpa for unpacked rows
        if backend == "varlen":
            model.to(torch.bfloat16)
            alone_bf16 = torch.cat([model(d[None])[0] for d in docs]).float()
        packed = with_settings(model, OpSettings(attn_backend=backend))(ids, position_ids=pos.cuda())[0].float()
    if backend != "varlen":
        assert (packed - alone).abs().max() <= 1e-5
    else:  # bf16 kernels round differently (ours are not torch's): as close to fp32 as bf16 SDPA is for each
        # document alone; a mask that leaks across documents is off by O(1)
        assert (packed - alone).abs().max() <= 1.25 * (alone_bf16 - alone).abs().max() + 1e-2


def test_labels_give_per_token_nll_equal_to_logits_cross_entropy():
    cfg = ModelConfig(**{**BASE, **PARITY_CASES["nope-interval-4"], "dtype": "float32"})
    model = build_model(cfg)
    randomise_(model)
    x = tokens(20)
    labels = torch.full_like(x, -100)
    labels[:, :-1] = x[:, 1:]  # shifted: position t predicts token t + 1
    labels[:, 5] = -100
    nll = model(x, labels=labels)
    logp = torch.log_softmax(model(x).float(), -1)
    ref = -logp[:, :-1].gather(-1, x[:, 1:, None])[..., 0]
    ref[:, 5] = 0
    assert nll.shape == x.shape and torch.all(nll[:, -1] == 0)
    assert (nll[:, :-1] - ref).abs().max() <= 1e-5
    nll.sum().backward()  # gradients flow through the chunked path
    assert model.model.embed_tokens.weight.grad is not None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("backend", ["sdpa", "flex", "varlen"])
def test_training_step_under_bf16_autocast_every_gpu_backend(backend):
    """fp32 master weights under bf16 autocast, as the trainer runs them: each backend gives the same loss."""
    from smollm3.ops.attention import _varlen_impl

    if backend == "varlen" and _varlen_impl() is None:
        pytest.skip("no varlen kernel")
    cfg = ModelConfig(**{**BASE, **PARITY_CASES["nope-interval-4"], "dtype": "float32", "hidden_size": 256})
    model = build_model(cfg, device="cuda")
    ids, pos = pack([torch.randint(0, cfg.vocab_size, (n,)).cuda() for n in (37, 5, 86)])
    labels = torch.roll(ids, -1, 1)
    losses = {}
    for b in ("sdpa", backend):
        model = with_settings(model, OpSettings(attn_backend=b))
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(ids, position_ids=pos.cuda(), labels=labels).mean()
        loss.backward()
        losses[b] = loss.item()
    assert abs(losses[backend] - losses["sdpa"]) < 2e-2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("backend", ["flex", "varlen"])
def test_forced_backend_without_packing_is_plain_causal(backend):
    from smollm3.ops.attention import _varlen_impl

    if backend == "varlen" and _varlen_impl() is None:
        pytest.skip("no varlen kernel")
    cfg = ModelConfig(**{**BASE, **PARITY_CASES["nope-interval-4"], "dtype": "float32", "hidden_size": 256})
    model = build_model(cfg, device="cuda", dtype=torch.bfloat16).eval()
    x = tokens(128).cuda()  # flex kernels take whole 128-token blocks (others are refused with a clear error)
    with torch.no_grad():
        out = with_settings(model, OpSettings(attn_backend=backend))(x).float()
        ref = with_settings(model, OpSettings(attn_backend="sdpa"))(x).float()
    assert (out - ref).abs().max() <= 3e-2


def test_cudnn_backend_is_refused_where_it_cannot_run():
    from smollm3.ops.attention import resolve_backend

    with pytest.raises(ValueError, match="'cudnn' needs a CUDA GPU"):
        resolve_backend("cudnn", torch.device("cpu"), packed=True, seq_len=1024, whole_rows=True)
    # auto never takes it on the CPU, whole rows or not
    assert resolve_backend("auto", torch.device("cpu"), packed=True, seq_len=1024, whole_rows=True) == "sdpa"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_whole_row_batches_take_cudnn_as_close_to_fp32_as_our_kernels():
    """One document a row (the long-context stages' full windows): auto runs cuDNN's attention at 32k tokens a row
    and more. Its output and q/k/v gradients are within 1e-2 of fp32 attention, as our kernels' are (a mask that
    leaks or a wrong head group is off by O(1)); it refuses a batch that packs documents."""
    from smollm3.ops.attention import attention, cudnn_attention_runs, resolve_backend

    cuda = torch.device("cuda")
    if not cudnn_attention_runs(cuda):
        pytest.skip("no cuDNN attention on this GPU or build")
    assert resolve_backend("auto", cuda, packed=True, seq_len=32768, whole_rows=True) == "cudnn"
    assert resolve_backend("auto", cuda, packed=True, seq_len=32768, whole_rows=False) == "varlen"
    assert resolve_backend("auto", cuda, packed=True, seq_len=32768, half=False, whole_rows=True) == "flex"
    assert resolve_backend("auto", cuda, packed=True, seq_len=4096, whole_rows=True) == "varlen"  # not measured
    B, H, KV, T, D = 2, 16, 4, 1024, 128
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(B, n, T, D, device="cuda", dtype=torch.bfloat16, generator=g) for n in (H, KV, KV))
    dout = torch.randn(B, T, H, D, device="cuda", dtype=torch.bfloat16, generator=g)
    doc = DocumentMask.from_position_ids(torch.arange(T, device="cuda").expand(B, T))
    assert doc.whole_rows

    def run(backend, q, k, v):
        q, k, v = (x.detach().clone().requires_grad_() for x in (q, k, v))
        if backend == "fp32":  # causal softmax attention, K/V heads repeated, all in fp32
            k32, v32 = (x.float().repeat_interleave(H // KV, 1) for x in (k, v))
            scores = (q.float() @ k32.transpose(-1, -2)) * D ** -0.5
            scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool, device="cuda").triu(1), float("-inf"))
            out = (scores.softmax(-1) @ v32).transpose(1, 2)
        else:
            out = attention(q, k, v, doc, backend, D ** -0.5)
        out.backward(dout.to(out.dtype))
        return out.detach(), q.grad, k.grad, v.grad

    want = run("fp32", q, k, v)
    for backend in ("cudnn", "varlen"):
        for name, got, ref in zip(("out", "dq", "dk", "dv"), run(backend, q, k, v), want):
            rel = ((got.float() - ref).abs().max() / ref.abs().max()).item()
            assert rel < 1e-2, (backend, name, rel)
    packed = DocumentMask.from_position_ids(torch.cat([torch.arange(100), torch.arange(T - 100)]).cuda()[None])
    with pytest.raises(ValueError, match="packs several documents"):
        attention(q[:1], k[:1], v[:1], packed, "cudnn", D ** -0.5)


def test_auto_backend_keeps_fp32_off_the_flash_kernels():
    """Flash (varlen) kernels take fp16/bf16 only: a model trained in fp32 on a GPU gets flex for packed rows."""
    from smollm3.ops.attention import resolve_backend

    cuda = torch.device("cuda")
    assert resolve_backend("auto", cuda, packed=True, seq_len=1024, half=False) == "flex"
    assert resolve_backend("auto", cuda, packed=True, seq_len=1000, half=False) == "sdpa"
    assert resolve_backend("auto", torch.device("cpu"), packed=True, seq_len=1024, half=True) == "sdpa"
