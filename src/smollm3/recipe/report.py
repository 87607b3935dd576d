"""The recipe report: OUT/report.md (stage -> metrics tables, the recipe's claims checked against the numbers),
OUT/report.json (everything), OUT/plots/*.png (training loss per stage, validation loss per language and domain,
retrieval accuracy against length, math in both modes, preference margin)."""

from __future__ import annotations

import json
import os
from pathlib import Path


def _fmt(x) -> str:
    return "–" if x is None else f"{x:.3f}" if isinstance(x, float) else str(x)


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _loss_curves(out: Path, recipe: dict) -> dict[str, list[tuple[int, float]]]:
    curves = {}
    for stage in recipe["stages"]:
        path = out / stage["name"] / "metrics.jsonl"
        if "train" in stage and path.exists():
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            curves[stage["name"]] = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    return curves


def claims(results: dict, recipe: dict) -> list[tuple[str, str, bool | None]]:
    """(claim, the numbers behind it, holds?) for the effects the SmolLM3 recipe reports, from `results` (the
    recipe's `report.claims` section names the checkpoints and lengths to compare)."""
    c = recipe.get("report", {}).get("claims", {})
    out = []

    def get(label, *keys):
        node = results.get(label)
        for k in keys:
            node = node.get(k) if isinstance(node, dict) else None
        return node

    pre = c.get("pretraining")  # [stage1 label, stage2 label, decay label]
    if pre and all(p in results for p in pre):
        names = sorted(results[pre[0]]["heldout"])
        losses = {n: [get(p, "heldout", n, "loss") for p in pre] for n in names}
        falls = all(v[0] > v[1] > v[2] for v in losses.values())
        detail = "; ".join(f"{n} " + " → ".join(f"{x:.3f}" for x in v) for n, v in losses.items())
        out.append(("validation loss falls across the pretraining stages and the decay lowers it further "
                    "(every language and domain)", detail, falls))
    lc = c.get("long_context")  # {before, after, at, yarn_at}
    if lc:
        before, after = get(lc["before"], "retrieval", lc["at"]), get(lc["after"], "retrieval", lc["at"])
        if before is not None and after is not None:
            out.append((f"retrieval at {lc['at']} rises after the long-context stages",
                        f"{lc['before']} {before:.2f} → {lc['after']} {after:.2f}", after > before))
        held = get(lc["after"], "retrieval", lc["yarn_at"])
        if held is not None and after is not None:
            out.append((f"with YaRN it holds at {lc['yarn_at']}",
                        f"{lc['after']}: {lc['at']} {after:.2f}, {lc['yarn_at']} {held:.2f}",
                        held >= 0.8 * after and held > 0))
    sft = c.get("sft")
    if sft and sft in results and "math" in results[sft]:
        m = results[sft]["math"]
        out.append(("after SFT, math accuracy in think mode exceeds no_think",
                    f"think {m['think']:.2f}, no_think {m['no_think']:.2f}", m["think"] > m["no_think"]))
        t = results[sft].get("tools", {})
        ok = [min(s["parses"], s["right_function"]) for s in t.values()]
        out.append(("≥ 90% of tool calls are well-formed and name the right function",
                    ", ".join(f"{k}: parses {s['parses']:.2f}, right function {s['right_function']:.2f}"
                              for k, s in t.items()), bool(ok) and min(ok) >= 0.9))
    apo = c.get("apo")  # {before, after}
    if apo and all(x in results and "preference" in results[x] for x in (apo["before"], apo["after"])):
        a, b = results[apo["before"]]["preference"]["margin"], results[apo["after"]]["preference"]["margin"]
        out.append(("APO raises the chosen-over-rejected log-prob margin on held-out pairs",
                    f"{apo['before']} {a:.2f} → {apo['after']} {b:.2f}", b > a))
    merge = c.get("merge")  # {before (apo), after (merged), reference (sft), at}
    if merge:
        key = merge["at"]
        ref, aft, mer = (get(merge[k], "retrieval", key) for k in ("reference", "before", "after"))
        if None not in (ref, aft, mer):
            lost = aft < ref
            out.append((f"the merge recovers part of the long-context accuracy APO lost ({key})",
                        f"{merge['reference']} {ref:.2f}, {merge['before']} {aft:.2f}, {merge['after']} {mer:.2f}"
                        + ("" if lost else " (APO lost none here)"), mer > aft if lost else mer >= aft))
    return out


def _save(fig, plots: Path, name: str, written: list[str]) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(plots / f"{name}.png", dpi=110)
    plt.close(fig)
    written.append(f"plots/{name}.png")


def _line_plot(plt, series: dict[str, list], xticks: list[str], ylabel: str, size, rotation: int, **legend):
    """One line per series over the same x ticks (checkpoints, or retrieval lengths)."""
    fig, ax = plt.subplots(figsize=size)
    for label, ys in series.items():
        ax.plot(range(len(xticks)), ys, marker="o", label=label)
    ax.set_xticks(range(len(xticks)), xticks, rotation=rotation, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7, **legend)
    return fig, ax


def write_plots(out: Path, recipe: dict, results: dict) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on CI machines
    import matplotlib.pyplot as plt

    plots = out / "plots"
    plots.mkdir(exist_ok=True)
    written = []

    curves = _loss_curves(out, recipe)
    if curves:
        fig, axes = plt.subplots(1, len(curves), figsize=(3.2 * len(curves), 2.8), squeeze=False)
        for ax, (name, pts) in zip(axes[0], curves.items()):
            ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=1)
            ax.set_title(name, fontsize=9)
            ax.set_xlabel("step", fontsize=8)
        axes[0][0].set_ylabel("training loss")
        _save(fig, plots, "training_loss", written)

    labels = [k for k, v in results.items() if "heldout" in v]
    if labels:
        series = {n: [results[k]["heldout"][n]["loss"] for k in labels] for n in sorted(results[labels[0]]["heldout"])}
        fig, _ = _line_plot(plt, series, labels, "validation loss (nats/token)", (8, 3.5), 30, ncol=2)
        _save(fig, plots, "validation_loss", written)

    labels = [k for k, v in results.items() if v.get("retrieval")]
    if labels:
        keys = list(results[labels[0]]["retrieval"])
        series = {k: [results[k]["retrieval"].get(x) for x in keys] for k in labels}
        fig, ax = _line_plot(plt, series, keys, "retrieval accuracy", (6, 3.5), 20)
        ax.set_ylim(-0.02, 1.02)
        _save(fig, plots, "retrieval", written)

    labels = [k for k, v in results.items() if "math" in v]
    if labels:
        fig, ax = plt.subplots(figsize=(6, 3))
        x = range(len(labels))
        ax.bar([i - 0.2 for i in x], [results[k]["math"]["think"] for k in labels], 0.4, label="think")
        ax.bar([i + 0.2 for i in x], [results[k]["math"]["no_think"] for k in labels], 0.4, label="no_think")
        ax.set_xticks(list(x), labels, fontsize=8)
        ax.set_ylabel("math exact match")
        ax.legend(fontsize=8)
        _save(fig, plots, "math_modes", written)
    return written


def write_report(recipe: dict, out: Path, report: dict) -> list[dict]:
    """Write OUT/report.md, OUT/report.json and the plots; -> the claims, each {claim, numbers, holds}."""
    results = report.get("results", {})
    lines = [f"# Recipe `{report['recipe']}`", "", recipe.get("description", "").strip(), ""]
    checked = claims(results, recipe)
    if checked:
        lines += ["## The recipe's claims, measured", "",
                  _table(["claim", "numbers", "holds"], [[c, d, "yes" if ok else "NO"] for c, d, ok in checked]), ""]
    heldout = [k for k, v in results.items() if "heldout" in v]
    if heldout:
        names = sorted(results[heldout[0]]["heldout"])
        lines += ["## Validation loss (nats/token) per language and domain", "",
                  _table(["checkpoint", *names], [[k, *(results[k]["heldout"][n]["loss"] for n in names)]
                                                  for k in heldout]), ""]
    retr = [k for k, v in results.items() if v.get("retrieval")]
    if retr:
        keys = list(results[retr[0]]["retrieval"])
        lines += ["## Retrieval accuracy (RULER-style: plain-text prompts for base checkpoints; for chat checkpoints the "
                  "question as a user turn when the recipe's evaluation.chat.retrieval asks for it)", "",
                  _table(["checkpoint", *keys], [[k, *(results[k]["retrieval"].get(x) for x in keys)] for k in retr]), ""]
    chat = [k for k, v in results.items() if "math" in v or "tools" in v or "preference" in v]
    if chat:
        rows = []
        for k in chat:
            r = results[k]
            tools = r.get("tools", {})
            rows.append([k, r.get("math", {}).get("think"), r.get("math", {}).get("no_think"),
                         *(tools.get(s, {}).get(m) for s in ("tool_xml", "tool_python")
                           for m in ("parses", "right_function")),
                         r.get("preference", {}).get("margin"), r.get("preference", {}).get("chosen_wins")])
        lines += ["## Chat checkpoints", "",
                  _table(["checkpoint", "math think", "math no_think", "xml parses", "xml right fn", "python parses",
                          "python right fn", "pref. margin", "chosen wins"], rows), ""]
    plots = write_plots(out, recipe, results)
    lines += ["## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in plots] + [""]
    t = report.get("timings", {})
    lines += ["## Time (seconds)", "", _table(["step", "seconds"], [[k, round(v, 1)] for k, v in t.items()]), "",
              f"Total: {sum(t.values()) / 60:.1f} minutes.", ""]
    tmp = out / "report.md.tmp"
    tmp.write_text("\n".join(lines))
    os.replace(tmp, out / "report.md")
    report = report | {"claims": [{"claim": c, "numbers": d, "holds": ok} for c, d, ok in checked]}
    (out / "report.json").write_text(json.dumps(report, indent=1))
    return report["claims"]
