"""The Triton decode kernels (ops/decode_kernels.py) against the eager decode layer (infer/fast.py over
ops/paged_attention.py): a whole batch-1 layer (RMSNorm, qkv, RoPE, KV write, attention with and without key splits,
o_proj + residual, SwiGLU, down_proj + residual), batched attention, the LM head and the argmax; on the GPU in bf16,
and through Triton's CPU interpreter in fp16 where Triton is installed. The KV cache is paged, its blocks shuffled
(block tables that are not the identity), in blocks smaller and larger than the kernel's key tile. Then the engine's
greedy tokens with the kernels on the GPU."""

import json
import os
import subprocess
import sys

import pytest
import torch
from random_weights import WIDE, randomise_, tiny_config

from smollm3 import build_model
from smollm3.ops.attention import rotate_half
from smollm3.infer import Engine, SamplingParams

try:
    import triton  # noqa: F401
except ImportError:
    triton = None

LAYER_CASES = [(64, True), (256, True), (256, False), (100, True)]  # (kv_len bucket, rope): 1 key split, several


def rel(a, b) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def paged(cache: torch.Tensor, block_size: int, order: torch.Tensor):
    """A contiguous cache [b, KV, S, D] as a paged one: (blocks [b * S / bs, KV, bs, D] shuffled by `order` (physical
    block p holds logical block order[p]), block tables [b, S / bs]): gathering each row's table gives it back."""
    b, kv, S, d = cache.shape
    nb = S // block_size
    blocks = cache.view(b, kv, nb, block_size, d).permute(0, 2, 1, 3, 4).reshape(b * nb, kv, block_size, d)
    tables = torch.empty(b * nb, dtype=torch.int32)
    tables[order] = torch.arange(b * nb, dtype=torch.int32)
    return blocks[order.to(cache.device)].contiguous(), tables.view(b, nb).to(cache.device)


def unpaged(blocks: torch.Tensor, tables: torch.Tensor) -> torch.Tensor:
    from smollm3.ops.paged_attention import gather_kv

    return gather_kv(blocks, tables.long())


def kernel_errors(device: str, dtype: torch.dtype, heads: int = 4, kv_heads: int = 2) -> dict:
    """Relative errors of the kernels against the eager maths of fast.py."""
    from smollm3.ops import decode_kernels as kern
    from smollm3.infer import fast

    g = torch.Generator().manual_seed(0)
    D, hid, inter = WIDE["head_dim"], WIDE["hidden_size"], WIDE["intermediate_size"]

    def rnd(*shape, scale=0.1):
        return (scale * torch.randn(*shape, generator=g)).to(device, dtype)

    def rope_tables(lengths):
        inv = 1.0 / (10000 ** (torch.arange(0, D, 2, device=device).float() / D))
        ang = (lengths.float()[:, None] * inv).repeat(1, 2)
        return ang.cos().to(dtype), ang.sin().to(dtype)

    w = (1 + rnd(hid, scale=0.2), rnd((heads + 2 * kv_heads) * D, hid), rnd(hid, heads * D), 1 + rnd(hid, scale=0.2),
         rnd(2 * inter, hid), rnd(hid, inter))
    kw = dict(heads=heads, kv_heads=kv_heads, eps=1e-6, scale=D ** -0.5)
    out = {}
    for (kv_len, rope), bs in zip(LAYER_CASES, (16, 64, 128, 32)):  # one layer, batch 1: x + delta is the kernels' x
        order = torch.randperm(512 // bs, generator=g)
        kc, tables = paged(rnd(1, kv_heads, 512, D, scale=1), bs, order)
        vc, _ = paged(rnd(1, kv_heads, 512, D, scale=1), bs, order)
        lengths = torch.tensor([kv_len - 1], device=device)
        cos, sin = rope_tables(lengths)
        x, delta = rnd(1, hid, scale=1), rnd(1, hid, scale=1)
        k1, v1, k2, v2 = kc.clone(), vc.clone(), kc.clone(), vc.clone()
        nb = -(-kv_len // bs)
        rx, rd = fast.decode_layer(x, delta, w, k1, v1, cos, sin, lengths, tables[:, :nb].long(), use_rope=rope,
                                   **kw)
        tx = fast.decode_layer_triton(x + delta, w, k2, v2, cos, sin, lengths, tables, nb * bs, use_rope=rope, **kw)
        out[f"layer-{kv_len}-{rope}-bs{bs}"] = {"x": rel(tx, rx + rd), "k": rel(k2, k1), "v": rel(v2, v1)}
    # attention alone, rows of different lengths in one batch; 4096 keys make chunks of several blocks per split
    b, kv_len = 3, 4096
    lengths = torch.tensor([4095, 17, 2500], device=device)
    cos, sin = rope_tables(lengths)
    qkv = rnd(b, (heads + 2 * kv_heads) * D, scale=1)
    kc, vc = rnd(b, kv_heads, kv_len, D, scale=1), rnd(b, kv_heads, kv_len, D, scale=1)
    order = torch.randperm(b * kv_len // 64, generator=g)
    (kp, tables), (vp, _) = paged(kc, 64, order), paged(vc, 64, order)
    q, k, v = qkv.split([heads * D, kv_heads * D, kv_heads * D], -1)
    q, k = (t.view(b, -1, D) * cos[:, None] + rotate_half(t.view(b, -1, D)) * sin[:, None] for t in (q, k))
    k1, v1 = kc.clone(), vc.clone()
    k1[torch.arange(b), :, lengths] = k.to(dtype)
    v1[torch.arange(b), :, lengths] = v.view(b, -1, D)
    keys, values = (c[:, :, :kv_len].repeat_interleave(heads // kv_heads, 1).float() for c in (k1, v1))
    scores = torch.einsum("bhd,bhsd->bhs", q.float(), keys) * D ** -0.5
    scores = scores.masked_fill(torch.arange(kv_len, device=device)[None, None, :] > lengths[:, None, None], -1e30)
    ref = torch.einsum("bhs,bhsd->bhd", scores.softmax(-1), values).reshape(b, heads * D)
    k2, v2 = kp.clone(), vp.clone()
    att = kern.attention(qkv, cos, sin, k2, v2, lengths, tables, kv_len, heads=heads, kv_heads=kv_heads,
                         scale=D ** -0.5, rope=True)
    out["attention-batch-3"] = {"out": rel(att, ref), "k": rel(unpaged(k2, tables), k1),
                                "v": rel(unpaged(v2, tables), v1)}
    # LM head: RMSNorm + projection + argmax; argmax keeps the first of tied maxima (across its 32768-wide blocks)
    x, lm, norm = rnd(1, hid, scale=1), rnd(5000, hid), 1 + rnd(hid, scale=0.2)
    lr, _ = fast.decode_head(x, torch.zeros_like(x), norm, lm, 1e-6)
    lt, at = fast.decode_head_triton(x, norm, lm, 1e-6)
    tied = torch.zeros(2, 70000, device=device, dtype=dtype)
    tied[0, [7, 40000, 69999]] = 3.0
    tied[1, [1200, 50000]] = 2.0
    out["head"] = {"logits": rel(lt, lr), "argmax_equal": bool((at == lt.argmax(-1)).all()),
                   "argmax_ties": kern.argmax(tied).tolist() == [7, 1200]}
    return out


def check(errors: dict, tol: float):
    for case, errs in errors.items():
        for name, e in errs.items():
            assert e is True if isinstance(e, bool) else e < tol, (case, name, e)


@pytest.mark.skipif(triton is None, reason="needs Triton (its CPU interpreter runs the kernels without a GPU)")
def test_kernels_match_eager_maths_in_interpreter():
    # the interpreter is chosen when the kernels are defined, so it runs in its own process; fp16 (the interpreter
    # emulates bf16 rounding differently from the GPU); GQA 2:1 and SmolLM3's 4:1
    code = ("import json, runpy, torch; m = runpy.run_path(%r); "
            "print(json.dumps([m['kernel_errors']('cpu', torch.float16, h, kv) for h, kv in ((4, 2), (8, 2))]))"
            % __file__)
    tests = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # this file imports tests/random_weights.py
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")]))
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    for errors in json.loads(res.stdout.strip().splitlines()[-1]):
        check(errors, 3e-3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_kernels_match_eager_maths_on_gpu():
    check(kernel_errors("cuda", torch.bfloat16), 2e-2)
    check(kernel_errors("cuda", torch.bfloat16, heads=16, kv_heads=4), 2e-2)


def greedy_gaps(engine, ref, prompts, n_new, together: bool = False) -> torch.Tensor:
    """For each token the engine picks greedily: how far below the fp32 model's best its fp32 logit is, as a
    fraction of that step's logit range (teacher-forced on the engine's own output; 0 = the argmax). `together`:
    the prompts are generated in one batch, else one at a time."""
    sp = SamplingParams(max_tokens=n_new, temperature=0.0, ignore_eos=True)
    outs = engine.generate(prompts, sp) if together else [engine.generate([p], sp)[0] for p in prompts]
    gaps = []
    for prompt, out in zip(prompts, outs):
        with torch.no_grad():
            logits = ref(torch.tensor([prompt + out.output_ids], device="cuda"))[0, len(prompt) - 1:-1].float()
        best = logits.max(-1).values
        chosen = logits.gather(1, torch.tensor(out.output_ids, device="cuda")[:, None])[:, 0]
        gaps.append((best - chosen) / (best - logits.min(-1).values))
    return torch.cat(gaps)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_engine_with_kernels_decodes_greedily_on_gpu():
    """At batch 1 the kernels pick tokens as well as the eager bf16 model does: bf16 alone moves the logits of
    this model by several % of their range (so neither always picks the fp32 argmax), while a wrong RoPE position,
    cache slot or mask puts picks far below the best."""
    cfg = tiny_config(**WIDE)
    ref = build_model(cfg)
    g = randomise_(ref)  # large weights: clear greedy winners
    ref = ref.to("cuda").eval()
    prompts = [torch.randint(3, cfg.vocab_size, (n,), generator=g).tolist() for n in (5, 40, 300, 77, 150)]
    gaps = {}
    for kernels in (False, True):
        model = build_model(cfg).to("cuda", torch.bfloat16).eval()
        model.load_state_dict(ref.state_dict())
        engine = Engine(model, None, max_model_len=512, cuda_graphs=kernels, fast_decode=kernels)
        assert (engine.runner.fast is not None and engine.runner.fast.kernels) == kernels
        gaps[kernels] = greedy_gaps(engine, ref, prompts, 40)
    assert gaps[True].mean() <= 2 * gaps[False].mean() + 2e-3, (gaps[True].mean(), gaps[False].mean())
    # bf16 near-ties: with the prompts read by the fused layers too, 179 of 200 picks were the fp32 argmax on an
    # H100 (session 20), where a fixed 90% bar failed by one; a wrong position or block falls far below the eager's
    exact = {k: (g == 0).float().mean().item() for k, g in gaps.items()}
    assert exact[True] >= exact[False] - 0.03, exact


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_paged_engine_under_pressure_on_gpu():
    """64 mixed-length prompts through the default GPU engine (CUDA graphs, kernels, pipelined decode) with a cache
    that holds a quarter of them (preemption), prompts read in chunks and a shared head served from the prefix
    cache: the tokens pick as well as the unpressured engine does (bf16 near-ties apart) and every block returns."""
    from smollm3.infer.cache import kv_bytes_per_token

    cfg = tiny_config(**WIDE)
    ref = build_model(cfg)
    g = randomise_(ref)
    ref = ref.to("cuda").eval()
    head = torch.randint(3, cfg.vocab_size, (130,), generator=g).tolist()
    prompts = [(head if i % 4 == 0 else []) + torch.randint(3, cfg.vocab_size, (int(n),), generator=g).tolist()
               for i, n in enumerate(torch.randint(1, 300, (64,), generator=g))]
    model = build_model(cfg).to("cuda", torch.bfloat16).eval()
    model.load_state_dict(ref.state_dict())
    per_token = kv_bytes_per_token(cfg, torch.bfloat16)
    roomy = Engine(model, None, max_model_len=512, max_num_seqs=64)
    tight = Engine(model, None, max_model_len=512, max_num_seqs=64, max_num_batched_tokens=256, block_size=16,
                   kv_cache_memory=per_token * 16 * (16 * 32 + 1))
    gaps = {name: greedy_gaps(e, ref, prompts, 40, together=True) for name, e in (("roomy", roomy), ("tight", tight))}
    assert tight.stats["preemptions"] > 0 and tight.stats["cached_prompt_tokens"] >= 15 * 128
    assert tight.num_free_blocks == tight.blocks.num_blocks
    assert gaps["tight"].mean() <= 2 * gaps["roomy"].mean() + 2e-3
    # bf16 near-ties: on the H200 the roomy engine picked the fp32 argmax for 86.5% of tokens, the tight one 87.4%,
    # the eager model (no graphs, no fused step) 87.9% (2026-12-05); a wrong block or position drops far below
    exact = {name: (g == 0).float().mean() for name, g in gaps.items()}
    assert exact["tight"] >= exact["roomy"] - 0.03

