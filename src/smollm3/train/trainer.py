"""The one training loop, for every stage: pretraining, long context, mid-training, SFT, DPO / APO.

    smollm3 train CONFIG.yaml [section.key=value ...]          # also under torchrun --nproc_per_node N

A step: fetch the global batch's micro-batches (this rank's share), normalise by the global number of loss tokens
(or preference pairs), backward each, clip, AdamW step. Every `checkpoint.every` steps the full state (model,
optimiser, step, data position, RNG) is written atomically; `resume: auto` continues from the newest complete one, so
a killed run resumes exactly. A non-finite loss or gradient norm stops the run and keeps the last good checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from smollm3.ops.attention import DocumentMask, resolve_backend
from smollm3.checkpoint import build_model, load_pretrained
from smollm3.config import ConfigError, causal_pairs, config_from_dict
from smollm3.model import change_config
from smollm3.tokenizer import load_tokenizer
from smollm3.train import distributed as D
from smollm3.train import profiling
from smollm3.train.checkpointing import (
    checkpoint_dir,
    find_resume_point,
    load_checkpoint,
    lock_out_dir,
    save_checkpoint,
    unlock_out_dir,
)
from smollm3.train.config import TrainConfig, config_to_dict, dump_config
from smollm3.train.data import build_data
from smollm3.ops.fp8 import supported as fp8_supported
from smollm3.ops.linear import index_add_in_order
from smollm3.train.graphs import MicroBatchGraphs
from smollm3.train.losses import IGNORE_INDEX, preference_loss
from smollm3.train.optim import build_optimizer, lr_factor, set_lr
from smollm3.train.precision import GradAccumFusion

SHAPE_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "head_dim", "tie_word_embeddings")
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "B200": 2250.0}


class TrainingDiverged(ValueError):  # a ValueError so the CLI reports it in one line
    pass


# ------------------------------------------------------------------------------------------------------------------
# set-up: everything that can be refused is checked here, before any compute


def build_model_for(cfg: TrainConfig, device="cpu"):
    """-> (model in fp32 on `device`, the loaded checkpoint's config or None). FSDP shards the model afterwards."""
    m = cfg.model
    if m.init_from:
        model = load_pretrained(m.init_from, device=device, dtype=torch.float32, settings=cfg.ops)
        loaded = model.config
        changed = {k: v for k, v in m.overrides.items() if getattr(loaded, k, None) != v}
        bad = [k for k in changed if k in SHAPE_KEYS]
        if bad:
            raise ConfigError(f"model.overrides change the shape of the checkpoint {m.init_from} ({', '.join(bad)}); "
                              "start from a checkpoint of the right shape, or train that shape from a preset")
        unknown = [k for k in changed if k not in loaded.__dict__]
        if unknown:
            raise ConfigError(f"model.overrides: unknown key(s) {unknown}")
        try:  # e.g. rope_theta and max_position_embeddings for a long-context stage
            change_config(model, **changed)
        except ValueError as e:
            raise ConfigError(f"model.overrides on the checkpoint {m.init_from}: {e}") from None
    else:
        loaded = None
        mcfg = config_from_dict({"preset": m.preset, **m.overrides, "dtype": "float32"}, source="model")
        torch.manual_seed(cfg.train.seed)
        model = build_model(mcfg, device=device, dtype=torch.float32, settings=cfg.ops)
    return model, loaded


def check_compatible(cfg: TrainConfig, model, tokenizer, loaded):
    mc = model.config
    if tokenizer.vocab_size > mc.vocab_size:
        raise ConfigError(f"the tokenizer has {tokenizer.vocab_size} ids but the model's vocabulary is {mc.vocab_size}; "
                          "use the model's own tokenizer or a model with vocab_size >= the tokenizer's")
    if cfg.data.seq_len > mc.max_position_embeddings:
        raise ConfigError(
            f"data.seq_len {cfg.data.seq_len} exceeds the model's max_position_embeddings {mc.max_position_embeddings}; "
            "for a long-context stage raise model.overrides.max_position_embeddings together with rope_theta "
            "(the recipe: 4k->32k with rope_theta 2e6, 32k->64k with 5e6)")
    if loaded is not None and cfg.data.seq_len > loaded.max_position_embeddings \
            and mc.rope_theta == loaded.rope_theta and mc.rope_scaling == loaded.rope_scaling:
        raise ConfigError(
            f"data.seq_len {cfg.data.seq_len} is longer than the checkpoint's {loaded.max_position_embeddings} positions "
            f"but RoPE is unchanged (rope_theta {loaded.rope_theta}); set model.overrides.rope_theta (the recipe "
            "raises it) or a YaRN rope_scaling")


# ------------------------------------------------------------------------------------------------------------------
# the loop


def train(cfg: TrainConfig) -> dict:
    dist = D.init_distributed()
    out = Path(cfg.out_dir)
    if dist.world > 1 and not cfg.train.fsdp:
        raise ConfigError("under torchrun, train.fsdp must be true (plain data parallel is FSDP with one shard group)")
    lock = _lock(out, dist)
    try:
        return _train(cfg, dist, out)
    finally:
        unlock_out_dir(lock)


def _lock(out: Path, dist) -> int | None:
    """Rank 0 holds out_dir's lock for the run (one lock per run: ranks of one run must not refuse each other);
    every rank learns whether it got it, so a refused run stops on all ranks at once instead of hanging."""
    lock, refusal = None, None
    if dist.is_main:
        try:
            lock = lock_out_dir(out)
        except ConfigError as e:
            refusal = e
    if dist.world > 1:
        refused = dist.all_reduce_sum(torch.tensor(float(refusal is not None), device=dist.device)).item()
        if refused and refusal is None:
            raise ConfigError(f"{out} is in use by another training run (rank 0 says which); not started")
    if refusal is not None:
        raise refusal
    return lock


def _resume_point(cfg: TrainConfig, out: Path, dist) -> Path | None:
    """Rank 0 checks the checkpoints (hashing every file once, not once per rank) and tells the others the step."""
    if dist.world == 1:
        return find_resume_point(out, cfg.checkpoint.resume)
    found, failure = None, None
    if dist.is_main:
        try:
            found = find_resume_point(out, cfg.checkpoint.resume)
        except (ValueError, OSError) as e:
            failure = e
    code = -2 if failure is not None else -1 if found is None else int((found / "COMPLETE").read_text())
    step = int(dist.all_reduce_sum(torch.tensor(float(code if dist.is_main else 0), device=dist.device)).item())
    if failure is not None:
        raise failure
    if step == -2:
        raise ConfigError("rank 0 found no valid checkpoint to resume from (its message says why); not started")
    if step == -1:
        return None
    return Path(cfg.checkpoint.resume) if cfg.checkpoint.resume != "auto" else checkpoint_dir(out, step)


def _train(cfg: TrainConfig, dist, out: Path) -> dict:
    if not (cfg.data.tokenizer or cfg.model.init_from):
        raise ConfigError("data.tokenizer is required when training from a preset")
    tokenizer = load_tokenizer(cfg.data.tokenizer or cfg.model.init_from)
    model, loaded = build_model_for(cfg, device="cpu")
    check_compatible(cfg, model, tokenizer, loaded)
    preference = cfg.train.objective in ("dpo", "apo_zero", "apo_down")
    data = build_data(cfg, tokenizer, dist)
    ref = None
    if preference:
        ref_path = cfg.train.ref_model or cfg.model.init_from
        if ref_path is None:
            raise ConfigError("dpo/apo needs a reference model: set train.ref_model or model.init_from")
        ref = load_pretrained(ref_path, device=dist.device, dtype=_amp_dtype(cfg) or torch.float32,
                              settings=cfg.ops).eval()
        ref.requires_grad_(False)

    model.to(dist.device)
    fsdp = dist.world > 1
    fusion = GradAccumFusion(model, _amp_dtype(cfg), cfg.train.fp8) if _use_grad_accum_fusion(cfg, dist) else None
    if cfg.train.keep_matmuls_layers > model.config.num_hidden_layers:
        raise ConfigError(f"train.keep_matmuls_layers is {cfg.train.keep_matmuls_layers}; the model has "
                          f"{model.config.num_hidden_layers} layers")
    if cfg.train.activation_checkpointing:
        D.apply_activation_checkpointing(model, keep_attention=cfg.train.activation_checkpointing == "selective",
                                         keep_matmuls_layers=cfg.train.keep_matmuls_layers)
    graphs = _micro_batch_graphs(cfg, model, fusion, dist)
    if cfg.train.compile:
        D.apply_compile(model)
    if fsdp:
        D.apply_fsdp(model, param_dtype=_amp_dtype(cfg))
    optimizer = build_optimizer(model, cfg.optim)

    start = 0
    resume = _resume_point(cfg, out, dist)
    if resume is not None:
        start = load_checkpoint(resume, model, optimizer, data, dist)
        if dist.is_main:
            print(f"resumed from {resume} at step {start}")
    metrics = _Metrics(out / "metrics.jsonl", dist, truncate_after=start, tensorboard=cfg.log.tensorboard,
                       wandb_project=cfg.log.wandb_project, run_config=cfg)
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(dump_config(cfg))

    autocast = _autocast(cfg, dist, fsdp)
    peak = _peak_flops(dist.device) * dist.world  # against the FLOPs of all ranks (_global_count sums them)
    pbar = _progress(cfg.train.steps, start, dist)
    last_saved = start
    model.train()
    t0 = time.perf_counter()
    for step in range(start, cfg.train.steps):
        profiled = profiling.start(dist.device) if cfg.log.profile_step == step + 1 else None
        set_lr(optimizer, cfg.optim.lr * lr_factor(step, cfg.train.steps, cfg.optim))
        micro = data.next_step()  # this rank's micro-batches for the global step
        if fusion is not None:
            fusion.begin_step()
        # this step's FLOPs from its own documents, counted on the CPU before any of its work is queued
        flops = _step_flops(micro, model.config, data.pad_id, with_reference=ref is not None)
        denom, flops = _global_count(micro, preference, dist, flops)
        if graphs is not None:
            graphs.set_loss_scale(dist.world / denom)
        loss_sum = torch.zeros((), device=dist.device)
        tokens = 0
        for i, batch in enumerate(micro):
            if fsdp:  # gather the parameters and reduce-scatter the gradients once a step, not every micro-batch
                last = i == len(micro) - 1
                model.set_requires_gradient_sync(last)
                model.set_reshard_after_backward(last)
                # each layer keeps its gathered parameters from forward to backward too (+16% on 2 H200s, +5 GiB;
                # benchmarks/results/2026-11-24-h200x2-fsdp-compiled.md); the root already does
                for layer in model.model.layers:
                    layer.set_reshard_after_forward(last)
            if graphs is not None:
                loss = graphs(batch)
            else:
                batch = _to_device(batch, dist.device)
                with autocast:
                    if preference:
                        loss = _preference_step(model, ref, batch, cfg)
                    else:
                        loss = model(batch["input_ids"], batch["position_ids"], labels=batch["labels"],
                                     document_mask=batch["document_mask"], label_index=batch["label_index"]).sum()
                (loss * dist.world / denom).backward()
            loss_sum += loss.detach()
            tokens += batch["input_ids"].numel()
        if fusion is not None:
            fusion.end_step()  # the folded RMSNorm gains' gradients
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip_grad)
        loss_value = dist.all_reduce_sum(loss_sum).item() / denom
        grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
        if not (math.isfinite(loss_value) and math.isfinite(grad_norm)):
            optimizer.zero_grad(set_to_none=True)
            raise TrainingDiverged(
                f"step {step + 1}: loss {loss_value} / grad norm {grad_norm} is not finite; stopped without updating. "
                f"The last good checkpoint is step {last_saved} in {out / 'checkpoints'}; lower optim.lr or check "
                "the data, then resume")
        optimizer.step()
        optimizer.zero_grad(set_to_none=fusion is None)  # the fusion's GEMMs write into the same .grad every step
        done = step + 1
        if profiled is not None:
            summary = profiling.finish(*profiled, dist.device, out / "profile", done, dist.rank)
            if dist.is_main:
                print(f"profiled step {done}: wall {summary['wall_ms']} ms, GPU busy {summary['gpu_busy_ms']} ms; "
                      f"trace and kernel table in {out / 'profile'}")
        elapsed = time.perf_counter() - t0
        global_tokens = tokens * dist.world
        record = {"step": done, "loss": loss_value, "lr": optimizer.param_groups[0]["lr"], "grad_norm": grad_norm,
                  "tokens_per_s": global_tokens / elapsed, "flops": flops}
        if peak:
            record["mfu"] = flops / elapsed / peak
        metrics.log(record, force=done % cfg.log.every == 0 or done == cfg.train.steps)
        pbar.update(record)
        t0 = time.perf_counter()
        if cfg.checkpoint.every and (done % cfg.checkpoint.every == 0 or done == cfg.train.steps):
            save_checkpoint(out, done, model, optimizer, data, dist, cfg, tokenizer)
            last_saved = done
    pbar.close()
    metrics.close()
    D.close_distributed()
    result = {"steps": cfg.train.steps, "out_dir": str(out)}
    if graphs is not None:
        result["cuda_graphs"] = {"eager": graphs.eager, "captures": graphs.captures, "replays": graphs.replays}
    return result


def _preference_step(model, ref, batch, cfg: TrainConfig) -> torch.Tensor:
    """Sum over this micro-batch's pairs of the DPO/APO loss. `segments` maps each token to 2*pair (chosen) or
    2*pair+1 (rejected), -1 for prompt and padding; log-probs are sums of label log-likelihoods per segment."""
    seg, n_pairs = batch["segments"], batch["num_pairs"]

    def logps(m):
        nll = m(batch["input_ids"], batch["position_ids"], labels=batch["labels"], document_mask=batch["document_mask"],
                label_index=batch["label_index"])
        sums = torch.zeros(2 * n_pairs, dtype=torch.float32, device=nll.device)
        # prompt and padding (-1) add 0 to segment 0: no boolean indexing, whose size the host would wait for
        return index_add_in_order(sums, seg.clamp(min=0).flatten(), -(nll.float() * (seg >= 0)).flatten())

    policy = logps(model)
    with torch.no_grad():
        reference = batch["ref_logps"] if "ref_logps" in batch else logps(ref)
    loss, _, _ = preference_loss(policy[0::2], policy[1::2], reference[0::2], reference[1::2],
                                 loss_type="sigmoid" if cfg.train.objective == "dpo" else cfg.train.objective,
                                 beta=cfg.train.beta, label_smoothing=cfg.train.label_smoothing)
    return loss * n_pairs  # a sum over pairs; the caller divides by the global pair count


def _to_device(batch: dict, device: torch.device) -> dict:
    """The loader's CPU tensors on `device`, asynchronously (pinned, non-blocking), with what the model would
    otherwise derive on the GPU (the document mask, the positions whose label counts) found on the CPU first:
    nothing here or in the model waits for the GPU, so the host can queue kernels ahead of it across micro-batches."""
    def move(v):
        if not torch.is_tensor(v):
            return v
        return v.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else v.to(device)

    cpu = {**batch, "label_index": (batch["labels"].reshape(-1) != IGNORE_INDEX).nonzero().squeeze(1)}
    mask = DocumentMask.from_position_ids(batch["position_ids"])
    return {**{k: move(v) for k, v in cpu.items()},
            "document_mask": dataclasses.replace(mask, doc_ids=move(mask.doc_ids), cu_seqlens=move(mask.cu_seqlens))}


def _global_count(micro: list[dict], preference: bool, dist, flops: int) -> tuple[float, float]:
    """-> (the loss's denominator over all ranks: label tokens or preference pairs, the step's FLOPs over all
    ranks); `flops` is this rank's. Ranks' documents differ, so their FLOPs do: one all-reduce sums both."""
    if preference:
        n = sum(b["num_pairs"] for b in micro)
    else:
        n = sum(int((b["labels"] != IGNORE_INDEX).sum()) for b in micro)
    if dist.world > 1:  # one process needs no device round trip (it would wait for the queued GPU work)
        # float64: a step's FLOPs (~1e16) lose no digit an MFU shows, and label counts stay exact
        n, flops = dist.all_reduce_sum(torch.tensor([n, flops], dtype=torch.float64, device=dist.device)).tolist()
    return max(float(n), 1.0), float(flops)


def _step_flops(micro: list[dict], config, pad_id: int | None, with_reference: bool) -> int:
    """Training FLOPs of this rank's micro-batches (ModelConfig.forward_flops, 3x for forward + backward, plus a
    forward of the reference model where DPO / APO runs one: `with_reference`), from the documents the step
    attends within: a document starts wherever a position is not its predecessor's + 1 (as DocumentMask reads
    position_ids) and attends causally inside itself. A row's padding (its last document, only `pad_id` tokens
    and no label: data/packing.py's collate) is left out, pairs and tokens both; the LM head counts the labelled
    positions, where the loss runs it. Host arithmetic on the loader's CPU tensors: nothing waits for the GPU."""
    total = 0
    for b in micro:
        ids, pos, labels = b["input_ids"].numpy(), b["position_ids"].numpy(), b["labels"].numpy()
        rows, width = pos.shape
        starts = np.ones(pos.shape, dtype=bool)
        starts[:, 1:] = pos[:, 1:] != pos[:, :-1] + 1
        lengths = []
        for r in range(rows):  # every row starts a document, so none crosses rows
            first = np.flatnonzero(starts[r])
            doc = np.diff(np.append(first, width)).tolist()
            last = first[-1]
            if pad_id is not None and (ids[r, last:] == pad_id).all() and (labels[r, last:] == IGNORE_INDEX).all():
                doc.pop()
            lengths += doc
        forward = config.forward_flops(sum(lengths), causal_pairs(lengths), int((labels != IGNORE_INDEX).sum()))
        total += 3 * forward + (forward if with_reference and "ref_logps" not in b else 0)
    return total


def _amp_dtype(cfg: TrainConfig):
    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": None}[cfg.train.dtype]


def _use_grad_accum_fusion(cfg: TrainConfig, dist) -> bool:
    usable = dist.world == 1 and _amp_dtype(cfg) is not None
    if cfg.train.grad_accum_fusion and not usable:
        raise ConfigError("train.grad_accum_fusion needs a single process and train.dtype bfloat16 or float16 "
                          "(under torchrun FSDP2 casts parameters itself); set it to null or false")
    # compiled layers with activation checkpointing keep every activation when the fused modules are inside: 37 GiB
    # against autocast's 5 GiB at micro-batch 4 of the 3B preset (benchmarks/results/2026-11-24-h100-train-host.md)
    checkpointed_and_compiled = cfg.train.activation_checkpointing and cfg.train.compile
    if cfg.train.grad_accum_fusion and checkpointed_and_compiled:
        raise ConfigError("train.grad_accum_fusion with train.activation_checkpointing and train.compile keeps the "
                          "activations checkpointing should drop; set grad_accum_fusion to null or false (autocast)")
    fp8 = cfg.train.fp8
    if cfg.train.grad_accum_fusion is None:  # auto: where it is measured faster (benchmarks/bench_train.py)
        fused = usable and (dist.device.type == "cuda" or fp8 is not None) and not checkpointed_and_compiled
    else:
        fused = cfg.train.grad_accum_fusion
    if fp8 is not None:  # a known recipe: TrainConfig checked
        if not fused or cfg.train.dtype != "bfloat16":
            raise ConfigError("train.fp8 runs inside the fused bf16 path (train.grad_accum_fusion): it needs one "
                              "process, train.dtype bfloat16, and no activation checkpointing in compiled runs; "
                              "set train.fp8 to null otherwise")
        if not fp8_supported(dist.device):
            name = torch.cuda.get_device_name(dist.device) if dist.device.type == "cuda" else dist.device.type
            raise ConfigError(f"train.fp8 needs FP8 tensor cores (compute capability 8.9+: Ada, Hopper); {name} has "
                              "none; set train.fp8 to null")
    return fused


def _micro_batch_graphs(cfg: TrainConfig, model, fusion, dist) -> MicroBatchGraphs | None:
    """train.cuda_graphs: true (refused with the reason where it cannot run), false, or null: on wherever it can
    (benchmarks/results/2026-11-25-h100-cuda-graphs.md: 3.7x on the 360M preset, 1-2% on the 3B)."""
    if cfg.train.cuda_graphs is False:
        return None
    if dist.device.type != "cuda":
        why = "it needs a CUDA device"
    elif dist.world > 1:
        why = "it needs one process"
    elif fusion is None:
        why = "it replays the fused path's fp32 gradient buffers (train.grad_accum_fusion)"
    elif cfg.train.objective not in ("lm", "sft"):
        why = f"it runs causal-LM objectives (lm, sft), not {cfg.train.objective}"
    elif resolve_backend(cfg.ops.attn_backend, dist.device, True, cfg.data.seq_len) == "flex":
        why = "its shapes must not change: use ops.attn_backend varlen or sdpa, not flex"
    else:
        return MicroBatchGraphs(model, _amp_dtype(cfg), dist.device)
    if cfg.train.cuda_graphs:
        raise ConfigError(f"train.cuda_graphs: {why}; set train.cuda_graphs to false")
    return None


def _autocast(cfg: TrainConfig, dist, fsdp: bool):
    dtype = _amp_dtype(cfg)
    if dtype is None or fsdp:  # FSDP casts parameters itself (MixedPrecisionPolicy); fp32 runs need nothing
        return contextlib.nullcontext()
    return torch.autocast(dist.device.type, dtype=dtype)


def _peak_flops(device: torch.device) -> float:
    if device.type != "cuda":
        return 0.0
    name = torch.cuda.get_device_name(device)
    return next((v * 1e12 for k, v in PEAK_BF16_TFLOPS.items() if k in name), 0.0)


class _Metrics:
    """metrics.jsonl (rank 0), rewritten on resume to hold only steps up to the resumed one, so the file after a
    resume is the uninterrupted run's; a line torn by a crash (disk full, power loss) is dropped. TensorBoard if
    present."""

    def __init__(self, path: Path, dist, truncate_after: int, tensorboard: bool, wandb_project=None, run_config=None):
        self.main = dist.is_main
        self.file = self.tb = self.wandb = None
        if not self.main:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        kept, torn = [], 0
        if path.exists():
            for ln in path.read_text(errors="replace").splitlines():
                try:
                    step = json.loads(ln)["step"]
                except (ValueError, KeyError, TypeError):
                    torn += ln.strip() != ""
                    continue
                if isinstance(step, int) and step <= truncate_after:
                    kept.append(ln)
        if torn:
            print(f"{path}: dropped {torn} unreadable line(s) (a write cut short by a crash)")
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(ln + "\n" for ln in kept))
        tmp.replace(path)
        self.file = open(path, "a")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(path.parent / "tensorboard"))
            except ImportError:
                self.tb = None
        if wandb_project:
            try:
                import wandb
            except ImportError:
                raise ConfigError("log.wandb_project is set but wandb is not installed: pip install wandb") from None

            self.wandb = wandb.init(project=wandb_project, dir=str(path.parent), config=config_to_dict(run_config),
                                    resume="allow")

    def log(self, record: dict, force: bool):
        if not self.main:
            return
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.tb is not None and force:
            for k, v in record.items():
                if k != "step":
                    self.tb.add_scalar(f"train/{k}", v, record["step"])
        if self.wandb is not None and force:
            self.wandb.log({f"train/{k}": v for k, v in record.items() if k != "step"}, step=record["step"])

    def close(self):
        if self.file:
            self.file.close()
        if self.tb:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


class _progress:
    def __init__(self, total: int, start: int, dist):
        self.bar = None
        if dist.is_main:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, desc="train", unit="step", dynamic_ncols=True)

    def update(self, r: dict):
        if self.bar is not None:
            post = {"loss": f"{r['loss']:.4f}", "lr": f"{r['lr']:.2e}", "gnorm": f"{r['grad_norm']:.2f}",
                    "tok/s": f"{r['tokens_per_s']:,.0f}"}
            if "mfu" in r:
                post["mfu"] = f"{r['mfu']:.1%}"
            self.bar.set_postfix(post, refresh=False)
            self.bar.update(1)

    def close(self):
        if self.bar is not None:
            self.bar.close()
