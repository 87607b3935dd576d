"""`smollm3 tokenizer train`, `smollm3 corpus build`, `smollm3 data prepare|synth` (docs/data.md)."""

from __future__ import annotations

import json
from pathlib import Path


def add(sub, name, help):
    {"tokenizer": _add_tokenizer, "corpus": _add_corpus, "data": _add_data}[name](sub, help)


def _add_tokenizer(sub, help):
    p = sub.add_parser("tokenizer", help=help,
                       description="Tokenizer tools. `train` writes an HF tokenizer directory (tokenizer.json, "
                                   "tokenizer_config.json, special_tokens_map.json, chat_template.jinja).")
    tsub = p.add_subparsers(dest="tokenizer_command", metavar="SUBCOMMAND", required=True)
    t = tsub.add_parser("train", help="train byte-level BPE on text / JSON-lines files",
                        description="Byte-level BPE (HF tokenizers), digits split one by one, SmolLM3's special "
                                    "tokens as single ids after the BPE vocabulary, our SmolLM3 chat template.")
    t.add_argument("--corpus", nargs="+", required=True, metavar="PATH",
                   help="text files, JSON-lines files with a \"text\" field (.jsonl/.json/.ndjson, .gz ok), or "
                        "directories: their .txt/.jsonl/.ndjson files (so a `corpus build` folder works as it is)")
    t.add_argument("--vocab-size", type=int, required=True, help="total ids, special-token slots included")
    t.add_argument("--out", required=True, help="output directory")
    t.add_argument("--special-slots", type=int, default=256,
                   help="ids reserved for special tokens at the end of the vocabulary (default 256, as SmolLM3)")
    t.add_argument("--min-frequency", type=int, default=2, help="merge only pairs seen at least this often")
    t.set_defaults(func=_run_tokenizer_train)


def _run_tokenizer_train(args):
    from smollm3.tokenizer import train_tokenizer

    tok = train_tokenizer(args.corpus, args.vocab_size, args.out, special_slots=args.special_slots,
                          min_frequency=args.min_frequency)
    print(f"wrote {args.out} ({tok.vocab_size} ids: {tok.vocab_size - args.special_slots} BPE + "
          f"{args.special_slots} special; <|im_start|>={tok.token_to_id('<|im_start|>')}, "
          f"<|im_end|>={tok.token_to_id('<|im_end|>')})")


def _add_corpus(sub, help):
    from smollm3.data.corpus import SOURCES

    p = sub.add_parser("corpus", help=help,
                       description="Corpus tools. `build` fetches Debian documentation packages (apt-get download, "
                                   "cached; never installed), converts them to text, keeps the paragraphs in each "
                                   "language, and adds Python's standard library as code: OUT/<lang>/<source>.jsonl, "
                                   "source package and licence in every record.")
    csub = p.add_subparsers(dest="corpus_command", metavar="SUBCOMMAND", required=True)
    b = csub.add_parser("build", help="fetch, convert and language-filter the corpus (a rerun is instant)")
    b.add_argument("--out", required=True, help="output directory")
    b.add_argument("--langs", default="en,fr,es,de,it,pt", help="comma-separated languages (default: all six)")
    b.add_argument("--sources", default=None, help=f"comma-separated sources (default: all): {','.join(SOURCES)}")
    b.add_argument("--no-code", action="store_true", help="leave out the Python standard library")
    b.add_argument("--cache", default=None, help="download cache (default: ~/.cache/smollm3/corpus, or $SMOLLM3_CACHE)")
    b.add_argument("--debs", default=None, metavar="DIR",
                   help="use .deb files from DIR instead of apt-get (for machines without apt)")
    b.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    b.set_defaults(func=_run_corpus_build)


def _run_corpus_build(args):
    from smollm3.data.corpus import build_corpus, summary

    langs = tuple(x.strip() for x in args.langs.split(",") if x.strip())
    sources = tuple(x.strip() for x in args.sources.split(",") if x.strip()) if args.sources else None
    manifest = build_corpus(args.out, langs, code=not args.no_code, sources=sources, cache=args.cache,
                            debs=args.debs, workers=args.workers)
    print(summary(manifest))
    print(f"wrote {args.out} (MB of text per language; licences in every record and in {args.out}/LICENSES)")


def _add_data(sub, help):
    from smollm3.data.synthetic_long import KINDS

    p = sub.add_parser("data", help=help,
                       description="Data tools. `prepare` writes datatrove-layout token shards (.ds, .ds.index, "
                                   ".ds.metadata) that the pretraining mixture reads; `synth` writes seeded "
                                   "synthetic tasks (math, tools, chats, preference pairs, long-context retrieval) "
                                   "as JSONL in TRL's conversational format.")
    dsub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    d = dsub.add_parser("prepare", help="jsonl / jsonl.gz / parquet / txt -> token shards (parallel, resumable)")
    d.add_argument("--input", nargs="+", required=True, metavar="PATH", help="files or directories of them")
    d.add_argument("--tokenizer", required=True, help="HF tokenizer directory (or .gguf)")
    d.add_argument("--out", required=True, help="shard directory (rerunning resumes: finished shards are skipped)")
    d.add_argument("--text-key", default="text", help="the text field of JSONL records / parquet column")
    d.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    d.add_argument("--chunk-mb", type=float, default=64.0, help="input MB per shard (default 64)")
    d.add_argument("--eos-token", default=None, help="token appended to every document (default: the tokenizer's eos)")
    d.set_defaults(func=_run_data_prepare)
    s = dsub.add_parser("synth", help="write N seeded synthetic examples of a task as JSONL")
    s.add_argument("task", help="arithmetic | small_arithmetic | word_problem | running_total | memory_chat | "
                                "preference | tool_xml | tool_python | " + " | ".join(KINDS))
    s.add_argument("--n", type=int, required=True, help="number of examples")
    s.add_argument("--out", required=True, help="output .jsonl")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--think", action="store_true", help="reasoning traces (think mode) where the task has them")
    s.add_argument("--length", type=int, default=4096, help="long-context tasks: tokens per example")
    s.add_argument("--tokenizer", default=None, help="long-context tasks: count tokens exactly with this tokenizer")
    s.set_defaults(func=_run_data_synth)


def _run_data_prepare(args):
    from smollm3.data.prepare import prepare

    s = prepare(args.input, args.tokenizer, args.out, text_key=args.text_key, workers=args.workers,
                chunk_mb=args.chunk_mb, eos_token=args.eos_token)
    mb = s["processed_bytes"] / 1e6
    rate = f", {mb / s['seconds']:.2f} MB/s" if s["processed_bytes"] and s["seconds"] else ""
    print(f"wrote {args.out}: {s['shards']} shards ({s['skipped_shards']} already done), {s['documents']:,} documents, "
          f"{s['tokens']:,} tokens{rate}")


def _run_data_synth(args):
    import os

    from smollm3.data.synthetic import generate
    from smollm3.data.synthetic_long import KINDS

    long = args.task in KINDS
    options = {}
    if long:
        from smollm3.tokenizer import load_tokenizer

        options = {"length": args.length, "tokenizer": load_tokenizer(args.tokenizer) if args.tokenizer else None}
    if args.think or not long:
        options["think"] = args.think
    examples = generate(args.task, args.n, seed=args.seed, **options)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(ex, ensure_ascii=False) + "\n" for ex in examples)
    os.replace(tmp, out)
    print(f"wrote {out} ({len(examples)} {args.task} examples, seed {args.seed})")
