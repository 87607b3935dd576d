"""lm-evaluation-harness adapter: our model and batched engine behind lm_eval's `LM` interface, model name "smollm3".

    pip install 'smollm3[lmeval]'
    python -m smollm3.eval.lm_eval_adapter --model smollm3 --model_args pretrained=DIR --tasks hellaswag,arc_easy
    python -m smollm3.eval.lm_eval_adapter --model smollm3 --model_args pretrained=DIR,yarn=2,max_length=131072 \\
        --tasks ... --apply_chat_template        # chat tasks through the model's own template (enable_thinking=False)

From Python, importing this module registers the model:

    import lm_eval, smollm3.eval.lm_eval_adapter
    lm_eval.simple_evaluate(model="smollm3", model_args="pretrained=DIR", tasks=["arc_easy"])

Why a wrapper: lm_eval looks model names up in its registry, and (0.4.x) has no plug-in entry point for models, so
the class must be registered in the process before lm_eval parses `--model`; `--include_path` only loads task
YAMLs. `python -m smollm3.eval.lm_eval_adapter ARGS` imports this module, then runs lm_eval's own CLI on ARGS.

model_args: pretrained (an HF directory, required), device (default: cuda if available), dtype (default: bfloat16
on GPU, float32 on CPU; "auto" = that), batch_size (log-likelihood rows per forward, default 8; "auto" = 8),
max_length (context for truncation and rolling windows; default the model's positions), max_gen_toks (default 256),
yarn (FACTOR: YaRN rope scaling, as `smollm3 eval --yarn`), chat_template (name or .jinja; default the model's own),
enable_thinking (default False, as `--mode no_think`), max_num_seqs (sequences decoded at once, default 32).

Scoring follows our runner (smollm3.eval.runner): a context is encoded with the tokenizer's BOS where it adds one,
and a continuation's tokens are those after the context's in the tokenization of context + continuation (the
continuation alone when a token merges across the boundary), so log-likelihoods equal `runner.loglikelihoods`. As
lm_eval's own models do, trailing spaces of a context move to the continuation, an empty context is the BOS (else
EOS) token, and sequences longer than max_length lose tokens from the left. Generation is on the batched engine.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from smollm3.chat import render_chat
from smollm3.checkpoint import load_config
from smollm3.eval.runner import yarn_overrides
from smollm3.eval.tasks import EvalError
from smollm3.infer.llm import engine_for, load_for_inference
from smollm3.infer.sampling import SamplingParams

NAME = "smollm3"
DEFAULT_BATCH = 8


def _bool(value) -> bool:
    # model_args arrive as strings from the command line ("False") or as Python values from simple_evaluate
    if isinstance(value, str):
        if value.lower() not in ("true", "false", "1", "0"):
            raise EvalError(f"expected True or False, got {value!r}")
        return value.lower() in ("true", "1")
    return bool(value)


class SmolLM3LM(LM):
    def __init__(self, pretrained: str, device: str | None = None, dtype=None, batch_size=DEFAULT_BATCH,
                 max_batch_size=None, max_length: int | None = None, max_gen_toks: int = 256,
                 yarn: float | None = None, chat_template: str | None = None, enable_thinking=False,
                 max_num_seqs: int = 32):
        super().__init__()
        if not Path(pretrained).is_dir():
            raise EvalError(f"model_args pretrained={pretrained}: not a model directory")
        if device is not None and str(device).startswith("cuda") and not torch.cuda.is_available():
            # the lm_eval CLI passes --device cuda unless told otherwise; a CPU-only machine still runs, on the CPU
            print(f"smollm3 lm_eval adapter: device {device} is not available here; using cpu", file=sys.stderr)
            device = "cpu"
        dtype = None if dtype == "auto" else dtype  # lm_eval's spelling of "the default"
        overrides = yarn_overrides(load_config(pretrained), float(yarn)) if yarn is not None else None
        self.model, self.tokenizer, self.gen_cfg = load_for_inference(
            pretrained, device, dtype, config_overrides=overrides, log=lambda _: None)
        if self.tokenizer is None:
            raise EvalError(f"model_args pretrained={pretrained}: no tokenizer.json in the directory")
        self.pretrained = str(pretrained)
        self._device = next(self.model.parameters()).device
        auto = batch_size is None or str(batch_size).startswith("auto")  # "auto", "auto:N": no search, a fixed size
        self.batch_size = DEFAULT_BATCH if auto else int(batch_size)
        positions = self.model.config.max_position_embeddings
        self.max_length = int(max_length) if max_length is not None else positions
        if self.max_length > positions:
            raise EvalError(f"model_args max_length={self.max_length} exceeds the model's {positions} positions; "
                            "lower it or add yarn=FACTOR")
        self.max_gen_toks, self.max_num_seqs = int(max_gen_toks), int(max_num_seqs)
        self.enable_thinking = _bool(enable_thinking)
        if chat_template is not None and Path(chat_template).is_file():
            self.template = Path(chat_template).read_text()
        else:
            self.template = chat_template or self.tokenizer.chat_template or "smollm3"
        self.templated = False  # set once lm_eval renders a chat template: its text carries the special tokens
        self._engine = None

    # ------------------------------------------------------------------------------------------------------------
    # tokens

    @property
    def prefix_token_id(self) -> int:
        tok = self.tokenizer
        return tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=not self.templated)

    def _pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """(context ids, continuation ids) as smollm3.eval.runner._split does (see the module docstring)."""
        if not context:
            return [self.prefix_token_id], self.tokenizer.encode(continuation)
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
        ctx, whole = self._encode(context), self._encode(context + continuation)
        if whole[:len(ctx)] == ctx and len(whole) > len(ctx):
            return ctx, whole[len(ctx):]
        return ctx, self.tokenizer.encode(continuation)

    # ------------------------------------------------------------------------------------------------------------
    # scoring

    @torch.no_grad()
    def _score(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """(sum of log p(continuation | context), whether greedy decoding yields the continuation) per pair; rows of
        similar length go through one right-padded forward, and only continuation positions reach the LM head."""
        rows = []
        for ctx, cont in pairs:
            row = (ctx + cont)[-(self.max_length + 1):]  # keep the end: what is scored
            n_cont = min(len(cont), len(row) - 1)
            rows.append((row[:-1], row[-n_cont:], len(row) - 1 - n_cont))  # (inputs, targets, first scored index)
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
        out: list[tuple[float, bool] | None] = [None] * len(rows)
        for b in range(0, len(order), self.batch_size):
            batch = order[b:b + self.batch_size]
            T = max(len(rows[i][0]) for i in batch)
            ids = torch.zeros(len(batch), T, dtype=torch.long)  # right padding: causal attention never looks ahead
            for j, i in enumerate(batch):
                ids[j, :len(rows[i][0])] = torch.tensor(rows[i][0])
            hidden = self.model.model(ids.to(self._device))
            for j, i in enumerate(batch):
                _, targets, start = rows[i]
                logp = self.model.lm_head(hidden[j, start:start + len(targets)]).float().log_softmax(-1)
                tgt = torch.tensor(targets, device=logp.device)
                out[i] = (float(logp.double().gather(-1, tgt[:, None]).sum()), bool((logp.argmax(-1) == tgt).all()))
        return out

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        results = self._score([self._pair(*req.args) for req in requests])
        for req, res in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood", req.args, res)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Each text's total log-likelihood, every token predicted once, in windows of max_length (lm_eval's own
        rolling windows), the first token conditioned on the BOS (else EOS) token."""
        results = []
        for req in requests:
            (text,) = req.args
            windows = [make_disjoint_window(w) for w in get_rolling_token_windows(
                token_list=self.tokenizer.encode(text), prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length, context_len=1)]
            total = sum(ll for ll, _ in self._score(windows))
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), total)
            results.append(total)
        return results

    # ------------------------------------------------------------------------------------------------------------
    # generation

    def _get_engine(self):
        if self._engine is None:  # built on first use: its KV cache costs memory that scoring never needs
            self._engine = engine_for(self.model, self.tokenizer, self.gen_cfg, max_num_seqs=self.max_num_seqs,
                                      max_model_len=self.max_length)
        return self._engine

    def _params(self, gen_kwargs: dict):
        kw = dict(gen_kwargs or {})
        until = kw.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        max_new = next((kw.pop(k) for k in ("max_gen_toks", "max_new_tokens", "max_tokens") if k in kw),
                       self.max_gen_toks)
        sample = kw.pop("do_sample", None)
        temperature = float(kw.pop("temperature", 0.0) or 0.0)
        if sample is False:
            temperature = 0.0  # lm_eval: do_sample=False is greedy whatever the temperature says
        return SamplingParams(max_tokens=int(max_new), temperature=temperature, top_p=kw.pop("top_p", None),
                              top_k=kw.pop("top_k", None), stop=until, seed=kw.pop("seed", None))

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        if not requests:
            return []
        engine = self._get_engine()
        ids, params = [], []
        for req in requests:
            context, gen_kwargs = req.args
            p = self._params(gen_kwargs)
            if p.max_tokens >= self.max_length:
                raise EvalError(f"max_gen_toks {p.max_tokens} must be below max_length {self.max_length}")
            ids.append(self._encode(context)[-(self.max_length - p.max_tokens):])  # keep the end of a long context
            params.append(p)
        outs = engine.generate(ids, params)
        texts = [o.text for o in outs]
        for req, text in zip(requests, texts):
            self.cache_hook.add_partial("generate_until", req.args, text)
        return texts

    # ------------------------------------------------------------------------------------------------------------
    # chat (lm_eval --apply_chat_template)

    def apply_chat_template(self, chat_history: list[dict], add_generation_prompt: bool = True) -> str:
        self.templated = True
        return render_chat(chat_history, template=self.template, enable_thinking=self.enable_thinking,
                           add_generation_prompt=add_generation_prompt)

    @property
    def tokenizer_name(self) -> str:
        return self.pretrained.replace("/", "__")

    def chat_template(self, chat_template=False) -> str:
        return self.template


def register() -> type[SmolLM3LM]:
    """Register SmolLM3LM as lm_eval model "smollm3" (idempotent, so importing this module twice is harmless)."""
    from lm_eval.api.registry import get_model

    try:
        existing = get_model(NAME)
    except (KeyError, ValueError):
        existing = None
    if existing is None:
        register_model(NAME)(SmolLM3LM)
    return SmolLM3LM


def main(argv: list[str] | None = None) -> None:
    """lm_eval's command line, with the "smollm3" model registered."""
    from lm_eval.__main__ import cli_evaluate

    sys.argv = ["lm-eval", *(sys.argv[1:] if argv is None else argv)]
    cli_evaluate()


if __name__ == "__main__":
    # run as a script this file is module __main__: register the importable module's class, not this copy's
    from smollm3.eval.lm_eval_adapter import main as _main

    _main()
else:
    register()
