"""Throughput of `smollm3 data prepare` (documents -> datatrove shards) in MB of input text per second per core,
with a 32k-vocabulary byte-level BPE tokenizer.

    python benchmarks/data_prepare.py [--corpus runs/corpus] [--work runs/bench-data] [--workers 1 2]

The corpus is `smollm3 corpus build`'s output (built first if missing). A 32,768-id tokenizer is trained on it
once with `smollm3 tokenizer train`. Each worker count runs into a fresh output folder. Reported per run:
wall-clock MB/s, MB/s per worker, and MB per CPU-second (CPU time of the process and its workers), which is the
per-core figure that stays meaningful when other jobs share the machine. Results go to
benchmarks/results/<date>-data-prepare.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
from datetime import date
from pathlib import Path

# one core per worker: the tokenizer's own thread pool would blur "per core" (set before tokenizers loads)
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["RAYON_NUM_THREADS"] = "1"

ROOT = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", default=str(ROOT / "runs" / "corpus"))
    ap.add_argument("--work", default=str(ROOT / "runs" / "bench-data"))
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--vocab-size", type=int, default=32768)
    ap.add_argument("--chunk-mb", type=float, default=8.0, help="small enough that every worker gets units")
    ap.add_argument("--name", default="", help="suffix of the result files (e.g. the machine)")
    args = ap.parse_args()

    from smollm3.data.prepare import prepare
    from smollm3.tokenizer import load_tokenizer

    corpus, work = Path(args.corpus), Path(args.work)
    if not (corpus / "manifest.json").exists():
        subprocess.run([sys.executable, "-m", "smollm3.cli", "corpus", "build", "--out", str(corpus)], check=True)
    inputs = sorted(corpus.rglob("*.jsonl"))
    tok_dir = work / f"tok{args.vocab_size // 1024}k"
    if not (tok_dir / "tokenizer.json").exists():  # in a subprocess: training may use every core, we may not
        subprocess.run([sys.executable, "-m", "smollm3.cli", "tokenizer", "train", "--corpus", *map(str, inputs),
                        "--vocab-size", str(args.vocab_size), "--out", str(tok_dir)], check=True,
                       env={k: v for k, v in os.environ.items() if k not in ("RAYON_NUM_THREADS",
                                                                              "TOKENIZERS_PARALLELISM")})
    vocab = load_tokenizer(tok_dir).vocab_size
    input_mb = sum(p.stat().st_size for p in inputs) / 1e6
    runs = []
    for workers in args.workers:
        out = work / f"shards-w{workers}"
        shutil.rmtree(out, ignore_errors=True)
        load = os.getloadavg()[0]
        s = prepare(inputs, tok_dir, out, workers=workers, chunk_mb=args.chunk_mb, progress=False)
        mb = s["processed_bytes"] / 1e6
        runs.append({"workers": s["workers"], "input_mb": round(mb, 2), "seconds": s["seconds"],
                     "cpu_seconds": s["cpu_seconds"], "mb_per_s": round(mb / s["seconds"], 3),
                     "mb_per_s_per_worker": round(mb / s["seconds"] / s["workers"], 3),
                     "mb_per_cpu_second": round(mb / s["cpu_seconds"], 3), "tokens": s["tokens"],
                     "documents": s["documents"], "shards": s["shards"], "bytes_per_token": round(
                         s["processed_bytes"] / s["tokens"], 3), "load_average_before": round(load, 2)})
        print(json.dumps(runs[-1]))
    command = "python benchmarks/data_prepare.py " + " ".join(sys.argv[1:])
    result = {"benchmark": "data prepare throughput", "date": date.today().isoformat(),
              "machine": {"host": platform.node(), "cpu": cpu_model(), "cores": os.cpu_count(),
                          "python": platform.python_version(), "os": platform.platform()},
              "command": command.strip(), "tokenizer": {"path": str(tok_dir), "vocab_size": vocab},
              "input": {"corpus": str(corpus), "files": len(inputs), "mb": round(input_mb, 2)}, "runs": runs}
    stem = ROOT / "benchmarks" / "results" / f"{result['date']}-data-prepare{'-' + args.name if args.name else ''}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# data prepare throughput ({result['date']})", "",
             (f"- machine: {result['machine']['cpu']}, {result['machine']['cores']} cores, Python "
             f"{result['machine']['python']} ({result['machine']['os']}); shared with other jobs, so the load "
             "average before each run is listed"),
             f"- command: `{result['command']}`",
             f"- tokenizer: byte-level BPE trained by `smollm3 tokenizer train` on the same corpus, {vocab} ids (uint16 shards)",
             (f"- input: `smollm3 corpus build` output, {len(inputs)} JSONL files, {input_mb:.1f} MB "
             "(six languages of prose + Python stdlib)"), "",
             "| workers | MB | seconds | MB/s | MB/s per worker | MB per CPU-second | tokens | bytes/token | load avg |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {r['workers']} | {r['input_mb']} | {r['seconds']} | {r['mb_per_s']} | "
                     f"{r['mb_per_s_per_worker']} | {r['mb_per_cpu_second']} | {r['tokens']:,} | "
                     f"{r['bytes_per_token']} | {r['load_average_before']} |")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {stem}.json and .md")


if __name__ == "__main__":
    main()
