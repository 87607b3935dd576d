"""The `smollm3` console script: thin subcommands over the package's plain functions.

One module per group of subcommands; `main` imports only the one the command line names, so `smollm3 --help` and
argument errors come back without importing torch. `Parser` gives every (sub)parser one-line errors and a
"did you mean" for mistyped flags and commands.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import sys

import smollm3

# command -> (module under smollm3.cli, the one-line help `smollm3 --help` lists)
COMMANDS = {
    "convert": ("models", "GGUF file or HF directory in, HF SmolLM3 directory out"),
    "generate": ("generate", "generate text from a prompt (simple KV-cache loop)"),
    "merge": ("models", "linear merge / model soup of HF checkpoints from a mergekit YAML"),
    "tokenizer": ("data", "train a byte-level BPE tokenizer"),
    "corpus": ("data", "build an offline multilingual text + code corpus from Debian docs"),
    "data": ("data", "tokenize documents into shards; generate synthetic tasks"),
    "train": ("train", "train any stage of the recipe from a YAML config (also under torchrun)"),
    "chat": ("engine", "interactive chat with streaming, /think and /no_think, tools"),
    "serve": ("engine", "OpenAI-compatible HTTP server (/v1/chat/completions, /v1/completions, ...)"),
    "eval": ("evaluate", "evaluate a model: multiple-choice cloze, generative exact match, bits-per-byte, "
                         "HumanEval, tool calls, RULER long context; `eval compare` diffs two results files"),
    "recipe": ("recipe", "run a whole training recipe: every stage, evaluation, a report"),
}


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors and typo hints: `--promt` is "did you mean --prompt?", not a missing --prompt."""

    def parse_known_args(self, args=None, namespace=None):
        args = list(sys.argv[1:] if args is None else args)
        self._check_flags(args)
        return super().parse_known_args(args, namespace)

    def _check_flags(self, args: list[str]) -> None:
        flags = [s for s in self._option_string_actions if s.startswith("--")]
        commands = {c for a in self._actions if isinstance(a, argparse._SubParsersAction) for c in a.choices}
        for arg in args:
            if arg == "--" or arg in commands:
                break  # what follows is a subcommand's, checked by its own parser
            if not arg.startswith("--"):
                continue
            name = arg.split("=", 1)[0]
            if name in self._option_string_actions or any(f.startswith(name) for f in flags):
                continue  # known, or an abbreviation argparse resolves (or reports as ambiguous)
            close = difflib.get_close_matches(name, flags, n=1, cutoff=0.6)
            self.error(f"unrecognized argument {name}" + (f" (did you mean {close[0]}?)" if close else ""))

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def number(kind, low=None, high=None, low_open=False, what=""):
    """An argparse type: `kind` (int or float) within [low, high] ((low, high] with low_open), or a one-line error
    that names the range."""

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a{'n integer' if kind is int else ' number'}") from None
        below = value <= low if low_open else value < low if low is not None else False
        if below or (high is not None and value > high):
            if high is None:
                rule = f"must be {'>' if low_open else '>='} {low}"
            else:
                rule = f"must be in {'(' if low_open else '['}{low}, {high}]"
            raise argparse.ArgumentTypeError(f"{rule}{what}, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def device(name: str | None) -> str:
    import torch

    if name and name != "auto":
        return name
    return "cuda" if torch.cuda.is_available() else "cpu"


def dtype_for(device: str, name: str | None):
    from smollm3.checkpoint import torch_dtype

    return torch_dtype(name or ("bfloat16" if device.startswith("cuda") else "float32"))


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The whole parser; given `argv`, only the named command's arguments are built (the others are listed)."""
    parser = Parser(prog="smollm3", description="The SmolLM3 system: model, data, training, merging, evaluation "
                                                "and inference. `smollm3 COMMAND --help` for each command.")
    parser.add_argument("--version", action="version", version=f"smollm3 {smollm3.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = argv[0] if argv and argv[0] in COMMANDS else None
    for name, (module, help) in COMMANDS.items():
        if argv is None or name == chosen:
            importlib.import_module(f"smollm3.cli.{module}").add(sub, name, help)
        else:
            sub.add_parser(name, help=help)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    if argv and not argv[0].startswith("-") and argv[0] not in COMMANDS:
        close = difflib.get_close_matches(argv[0], list(COMMANDS), n=1)
        parser.error(f"unknown command {argv[0]!r}" + (f" (did you mean {close[0]!r}?)" if close else
                                                        f"; commands: {', '.join(COMMANDS)}"))
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        args.func(args)
    except (FileNotFoundError, ValueError) as e:  # every error of ours on bad input is a ValueError
        print(f"smollm3 {args.command}: error: {e}", file=sys.stderr)
        return 1
    return 0
