"""benchmarks/bench_train.py on the CPU with the tiny preset: its document-length mixes, the MFU sanity check that
stops a run reading above 100%, and transformers' reference (with its gradient-checkpointing fallback)."""

import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from smollm3 import preset
from smollm3.config import causal_pairs

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(REPO / "benchmarks"))  # bench_train imports bench_model as the GPU sessions run it
    try:
        yield runpy.run_path(str(REPO / "benchmarks" / "bench_train.py"))
    finally:
        sys.path.remove(str(REPO / "benchmarks"))


def test_full_documents_fill_each_window_exactly(bench, tmp_path):
    from smollm3.data.mixture import MixtureLoader

    seq = 64
    bench["make_assets"](tmp_path, 512, (seq + 1) * 12, "full", seq)
    loader = MixtureLoader([{"start_tokens": 0, "weights": {str(tmp_path / "shards"): 1.0}}], seq, 4)
    for _ in range(3):
        batch = next(loader)
        assert (batch["position_ids"] == torch.arange(seq)).all()  # one document, never a restart
        assert (batch["labels"] != -100).all()  # and its last token still has a label: the window's + 1


def test_short_and_recipe_lengths_have_their_sources_means(bench):
    rng = np.random.default_rng(0)
    short = list(bench["document_lengths"]("short", 4096, 4_000_000, rng))
    assert min(short) >= 16 and np.mean(short) == pytest.approx(1024, rel=0.05)
    for seq, stage in ((32768, "long_context_32k.yaml"), (65536, "long_context_64k.yaml")):
        mix = bench["recipe_mix"](seq)
        import yaml

        weights = yaml.safe_load((bench["RECIPES"] / stage).read_text())["data"]["stages"][0]["weights"]
        assert [name for name, _, _ in mix] == list(weights)
        # documents drawn per source in proportion to weight / mean: the tokens then follow the weights
        expected = sum(w for _, w, _ in mix) / sum(w / m for _, w, m in mix)
        lengths = list(bench["document_lengths"]("recipe", seq, 4_000_000, rng))
        assert np.mean(lengths) == pytest.approx(expected, rel=0.05)
    with pytest.raises(ValueError, match="--docs 'long' is unknown; choose one of short, full, recipe"):
        bench["document_lengths"]("long", 4096, 100, rng)


def test_a_row_above_100_percent_mfu_is_named(bench):
    from bench_model import insane_mfu

    assert insane_mfu([{"name": "a", "mfu": 0.719}, {"name": "oom", "oom": True}, None]) is None
    line = insane_mfu([{"name": "a", "mfu": 0.719}, {"name": "compile-ac-ga2", "mfu": 1.047,
                                                     "flops_per_token": 47_000_000_000}])
    assert line.startswith("compile-ac-ga2: MFU 104.7% is above 100%")


def test_the_run_records_the_documents_flops_and_transformers_reference(bench, tmp_path):
    cfg = preset("tiny")
    name = "eager-noac-dlogits1"
    res = bench["main"](["--preset", "tiny", "--seq", "64", "--steps", "2", "--docs", "full", "--variants", name,
                         "--hf-reference", "--out", str(tmp_path / "r.json")])
    assert res["rows"][0]["ops"]["stored_dlogits_bytes"] == 2**30  # the word reached the trainer's config
    per_token = 3 * cfg.forward_flops(64, causal_pairs([64])) / 64  # one window-long document, every label counted
    assert res["docs"] == "full" and res["rows"][0]["flops_per_token"] == round(per_token)
    ref = res["reference"]
    assert ref["gradient_checkpointing"] is False and ref["flops_per_token"] == round(per_token)
    assert res["ratio_to_reference"][name] == round(res["rows"][0]["tokens_per_s"] / ref["tokens_per_s"], 3)
    assert (tmp_path / "r.json").exists()


def test_the_profiled_run_reports_the_steps_before_the_profiled_one(bench):
    """The profiled step runs slower (the profiler, its trace written out): its row is the steps before it."""
    res = bench["main"](["--preset", "tiny", "--seq", "64", "--steps", "2", "--variants", "eager-noac",
                         "--profile", "eager-noac"])
    top = res["profile_top"]
    row, steps = top["row"], top["row"]["steps_tokens_per_s"]
    assert top["step"] == 5 and len(steps) == 5 and row["name"] == "eager-noac-profiled"
    assert row["tokens_per_s"] == steps[3]  # step 4 alone (steady steps start at 4): step 5 is the profiled one


def test_mfu_above_100_percent_stops_the_run(bench, tmp_path, monkeypatch):
    from smollm3.train import trainer

    monkeypatch.setattr(trainer, "_peak_flops", lambda device: 1e3)  # a "GPU" of 1 kFLOP/s: every step beats it
    with pytest.raises(SystemExit, match=r"^eager-noac: MFU .*% is above 100%"):
        bench["main"](["--preset", "tiny", "--seq", "64", "--steps", "2", "--variants", "eager-noac"])


def test_the_reference_retries_with_gradient_checkpointing_then_records_out_of_memory(bench, monkeypatch):
    import bench_model

    measure, tried = bench_model.measure, []

    def tight(name, *args):  # a card where only the checkpointed model fits
        tried.append(name)
        if "gradient checkpointing" not in name:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return measure(name, *args)

    monkeypatch.setattr(bench_model, "measure", tight)
    row = bench["hf_reference"]("tiny", 32, "cpu", warmup=1, iters=2)
    assert row["gradient_checkpointing"] is True and row["name"].endswith("gradient checkpointing")
    assert len(tried) == 2 and row["tokens_per_s"] > 0

    def none_fits(name, *args):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(bench_model, "measure", none_fits)
    row = bench["hf_reference"]("tiny", 32, "cpu", warmup=1, iters=2)
    assert row["oom"] is True and row["gradient_checkpointing"] is True and "tokens_per_s" not in row


def test_bench_models_packed_rows_count_their_own_documents(bench):
    from bench_model import document_lengths, packed_positions

    gen = torch.Generator().manual_seed(0)
    pos = torch.stack([packed_positions(4096, 1024, gen) for _ in range(2)])
    lengths = document_lengths(pos)
    assert sum(lengths) == pos.numel() and len(lengths) == int((pos == 0).sum()) > 2
    # the packed rows' MFU used to be given the two windows' pairs
    assert causal_pairs(lengths) < causal_pairs([4096, 4096])
    starts = [0] + [i for i in range(1, 4096) if pos[1, i] == 0] + [4096]
    assert lengths[-(len(starts) - 1):] == [b - a for a, b in zip(starts, starts[1:])]  # the second row's own


def test_variant_words_set_the_config_they_name(bench):
    v = bench["parse_variant"]("compile-sac-keepmm36-dlogits8-fa2-ga2", 1)
    assert (v["compile_"], v["ac"], v["keep_matmuls"], v["accum"]) == (True, "selective", 36, 2)
    # the ops words add up rather than replace each other, in either order
    assert v["ops"] == {"stored_dlogits_bytes": 8 * 2**30, "triton_attention": False, "qkv_attention": False}
    assert bench["parse_variant"]("compile-fa2-dlogits8", 1)["ops"] == v["ops"]
    assert "ops" not in bench["parse_variant"]("compile-ac", 1)
