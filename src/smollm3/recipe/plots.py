"""The recipe report's figures (OUT/plots/*.png): training loss of every stage (raw and smoothed, one panel a stage),
validation loss per language and domain across checkpoints (with the uniform-guessing line), retrieval accuracy as
a checkpoint x length heatmap, math accuracy in both modes."""

from __future__ import annotations

import math
from pathlib import Path


def _save(fig, plots: Path, name: str, written: list[str]) -> None:
    import matplotlib.pyplot as plt

    fig.savefig(plots / f"{name}.png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    written.append(f"plots/{name}.png")


def smooth(ys: list[float], span: int) -> list[float]:
    """Centred moving average over `span` points (fewer at the ends): no lag on a falling curve, unlike an EMA."""
    half = max(1, span // 2)
    return [sum(ys[max(0, i - half):i + half + 1]) / len(ys[max(0, i - half):i + half + 1]) for i in range(len(ys))]


def _stage_label(stage: dict) -> str:
    t = stage.get("train") or {}
    objective = (t.get("train") or {}).get("objective", "lm")
    seq = (t.get("data") or {}).get("seq_len")
    return f"{stage['name']} ({objective}" + (f", {seq} tokens)" if seq else ")")


def training_loss(plt, curves: dict, recipe: dict):
    stages = {s["name"]: s for s in recipe["stages"]}
    cols = min(3, len(curves))
    rows = math.ceil(len(curves) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax in axes.flat[len(curves):]:
        ax.set_visible(False)
    for ax, (name, pts) in zip(axes.flat, curves.items()):
        steps, losses = [p[0] for p in pts], [p[1] for p in pts]
        ax.plot(steps, losses, lw=0.8, alpha=0.35, color="tab:blue", label="logged")
        ax.plot(steps, smooth(losses, max(3, len(losses) // 12)), lw=2, color="tab:blue", label="smoothed")
        stage = stages.get(name, {"name": name})
        objective = ((stage.get("train") or {}).get("train") or {}).get("objective", "lm")
        ax.set_title(_stage_label(stage), fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.set_ylabel("APO loss" if objective.startswith("apo") else
                      "DPO loss" if objective in ("dpo", "sigmoid") else "loss (nats/token)", fontsize=8)
        ax.tick_params(labelsize=7)
        for label, step in (stage.get("evaluate") or {}).items():  # where the intermediate checkpoints were taken
            ax.axvline(step, color="grey", ls=":", lw=1)
            ax.text(step, ax.get_ylim()[1], f" end of {label}", fontsize=7, color="grey", va="top", rotation=90)
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=7)
    fig.suptitle("Training loss per stage (losses of different objectives and data are not comparable across "
                 "panels)", fontsize=9)
    fig.tight_layout()
    return fig


def validation_loss(plt, results: dict, vocab: int | None):
    labels = [k for k, v in results.items() if "heldout" in v]
    names = sorted(results[labels[0]]["heldout"])
    fig, ax = plt.subplots(figsize=(9, 4))
    cmap = plt.get_cmap("tab10")
    for i, n in enumerate(names):
        ax.plot(range(len(labels)), [results[k]["heldout"][n]["loss"] for k in labels], marker="o",
                ls="-" if n.endswith("/web") else "--", color=cmap(i % 10), label=n)
    chat = [i for i, k in enumerate(labels) if "math" in results[k] or "preference" in results[k]]
    if chat:
        ax.axvspan(min(chat) - 0.5, max(chat) + 0.5, color="grey", alpha=0.12)
        ax.text(min(chat) - 0.4, ax.get_ylim()[0], "chat checkpoints: plain text\nis not what they are trained on",
                fontsize=7, va="bottom")
    if vocab:
        ax.axhline(math.log(vocab), color="black", ls=":", lw=1)
        ax.text(0, math.log(vocab), f"uniform guessing (ln {vocab})", fontsize=7, va="bottom")
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
    ax.set_xlabel("checkpoint (in recipe order)", fontsize=8)
    ax.set_ylabel("held-out loss (nats/token)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), title="held-out text", title_fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _length_label(key: str, one_kind: bool, trained: int | None) -> str:
    """"niah_single@2048+yarn2" -> "2048 (8×, YaRN ×2)" when the pretraining length is 256."""
    body = key.split("@", 1)[1] if one_kind else key
    length, _, yarn = body.partition("+yarn")
    try:
        times = f"{int(length) / trained:g}×" if trained and one_kind else ""
    except ValueError:
        times = ""
    extra = ", ".join(x for x in (times, f"YaRN ×{yarn}" if yarn else "") if x)
    return f"{length} ({extra})" if extra else length


def retrieval_heatmap(plt, results: dict, n: dict[str, int], chat_rows: set[str], trained: int | None):
    import numpy as np

    labels = [k for k, v in results.items() if v.get("retrieval")]
    keys = list(dict.fromkeys(x for k in labels for x in results[k]["retrieval"]))
    kinds = {k.split("@")[0] for k in keys}
    cols = [_length_label(k, len(kinds) == 1, trained) for k in keys]
    grid = np.array([[results[k]["retrieval"].get(x, np.nan) for x in keys] for k in labels], dtype=float)
    fig, ax = plt.subplots(figsize=(1.3 * len(keys) + 3, 0.38 * len(labels) + 1.6))
    im = ax.imshow(np.ma.masked_invalid(grid), vmin=0, vmax=1, cmap="viridis", aspect="auto")
    for i in range(len(labels)):
        for j in range(len(keys)):
            v = grid[i, j]
            ax.text(j, i, "–" if np.isnan(v) else f"{v:.2f}", ha="center", va="center", fontsize=8,
                    color="black" if not np.isnan(v) and v > 0.6 else "white" if not np.isnan(v) else "grey")
    ax.set_xticks(range(len(keys)), cols, fontsize=8)
    ax.set_yticks(range(len(labels)), [f"{k}{' · chat turn' if k in chat_rows else ''} ({n.get(k, '?')})"
                                       for k in labels], fontsize=8)
    first_chat = next((i for i, k in enumerate(labels) if k in chat_rows), None)
    if first_chat:
        ax.axhline(first_chat - 0.5, color="white", lw=3)
    ax.set_xlabel("prompt length in tokens (× the pretraining length)" +
                  (f", {next(iter(kinds))}" if len(kinds) == 1 else ""), fontsize=8)
    ax.set_title("Retrieval accuracy per checkpoint (rows in recipe order; needles per cell in brackets)",
                 fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02).ax.tick_params(labelsize=7)
    fig.tight_layout()
    return fig


def math_modes(plt, results: dict):
    labels = [k for k, v in results.items() if "math" in v]
    fig, ax = plt.subplots(figsize=(6, 3))
    x = range(len(labels))
    for shift, mode in ((-0.2, "think"), (0.2, "no_think")):
        vals = [results[k]["math"][mode] for k in labels]
        bars = ax.bar([i + shift for i in x], vals, 0.4, label=mode)
        ax.bar_label(bars, [f"{v:.2f}" for v in vals], fontsize=7)
    ax.set_xticks(list(x), labels, fontsize=8)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("exact match, held-out math")
    ax.set_title("Math accuracy in think and no_think mode", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def write_plots(out: Path, recipe: dict, results: dict, curves: dict, facts: dict) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on CI machines
    import matplotlib.pyplot as plt

    plots = out / "plots"
    plots.mkdir(exist_ok=True)
    written = []
    if curves:
        _save(training_loss(plt, curves, recipe), plots, "training_loss", written)
    if any("heldout" in v for v in results.values()):
        _save(validation_loss(plt, results, facts.get("vocab_size")), plots, "validation_loss", written)
    if any(v.get("retrieval") for v in results.values()):
        ev = recipe.get("evaluation", {})
        base_n = (ev.get("base", {}).get("retrieval") or {}).get("n", 50)
        chat_n = (ev.get("chat", {}).get("retrieval") or {}).get("n", base_n)
        chat = {k for k, v in results.items() if "math" in v or "preference" in v}
        n = {k: chat_n if k in chat else base_n for k in results}
        first = next((s for s in recipe["stages"] if "train" in s), {})
        trained = ((first.get("train") or {}).get("data") or {}).get("seq_len")
        chat_rows = chat if ev.get("chat", {}).get("retrieval") else set()
        _save(retrieval_heatmap(plt, results, n, chat_rows, trained), plots, "retrieval", written)
    if any("math" in v for v in results.values()):
        _save(math_modes(plt, results), plots, "math_modes", written)
    return written
