"""The recipe report: OUT/report.md (a paragraph saying what ran, how long and which claims held; the recipe's
claims checked against the numbers (recipe/claims.py); stage -> metrics tables with a note under any number that
looks wrong at miniature scale), OUT/report.json (everything), OUT/plots/*.png (training loss per stage, validation
loss per language and domain, retrieval accuracy per checkpoint and length, math in both modes)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from safetensors import safe_open

from smollm3.recipe import plots
from smollm3.recipe.claims import FAILS, HOLDS, NOT_SHOWN, NOT_TESTED, claims
from smollm3.recipe.spec import RecipeError, final_checkpoint


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


def model_facts(out: Path, recipe: dict) -> dict:
    """{params, vocab_size} of the recipe's last checkpoint, read from its files ({} when it has none)."""
    try:
        d = final_checkpoint(out, recipe["stages"][-1])
    except (RecipeError, FileNotFoundError):
        return {}
    if not (d / "config.json").is_file():
        return {}
    params = 0
    for f in sorted(d.glob("*.safetensors")):
        with safe_open(f, "np") as st:
            for k in st.keys():
                params += math.prod(st.get_slice(k).get_shape())
    return {"params": params, "vocab_size": json.loads((d / "config.json").read_text()).get("vocab_size")}


def epochs_read(out: Path, recipe: dict, stage_name: str) -> dict[str, float]:
    """{held-out name ("en/web", "code/python"): how many times pretraining stage `stage_name` read that source's
    training shards}, from the mixture weights, the steps and the shard sizes ({} where they cannot be found)."""
    stage = next((s for s in recipe["stages"] if s["name"] == stage_name and "train" in s), None)
    heldout = out / "data" / "heldout"
    if stage is None or not heldout.is_dir():
        return {}
    t, d = stage["train"].get("train", {}), stage["train"].get("data", {})
    per_step = t.get("micro_batch", 1) * t.get("grad_accum", 1) * d.get("seq_len", 0) * \
        int(os.environ.get("WORLD_SIZE", "1"))
    total, stages = t.get("steps", 0) * per_step, d.get("stages") or []
    drawn: dict[str, float] = {}
    for i, ds in enumerate(stages):
        end = stages[i + 1].get("start_tokens", total) if i + 1 < len(stages) else total
        tokens = max(0, end - ds.get("start_tokens", 0))
        weights = ds.get("weights") or {}
        for key, w in weights.items():
            name = str(key).replace("{data}", str(out / "data"))
            drawn[name] = drawn.get(name, 0.0) + tokens * w / sum(weights.values())
    out_epochs = {}
    for path in heldout.rglob("*.jsonl"):
        a, b = path.relative_to(heldout).with_suffix("").parts[-2:]
        for shard in (out / "data" / "shards" / f"{b}-{a}", out / "data" / "shards" / a):
            meta = sorted(shard.glob("*.ds.metadata"))  # "tokenizer|token size" then the token count
            if str(shard) in drawn and meta:
                n = sum(int(m.read_text().split("\n")[1]) for m in meta)
                out_epochs[f"{a}/{b}"] = drawn[str(shard)] / max(n, 1)
                break
    return out_epochs


def _status_cell(c: dict) -> str:
    if c["status"] == HOLDS:
        return "yes"
    if c["status"] == FAILS:
        return f"**NO**: {c['why']}"
    if c["status"] == NOT_TESTED:
        return f"not tested ({c['why']})"
    return f"not shown at this scale: {c['why']}"


def summary(recipe: dict, report: dict, checked: list[dict], facts: dict) -> str:
    """The opening paragraph: what ran, where, how long, and which claims held."""
    t = report.get("timings", {})
    stages = [s["name"] for s in recipe["stages"]]
    size = f"a {facts['params'] / 1e6:.1f}M-parameter model" if facts.get("params") else "a model"
    machines = sorted(set((report.get("machine") or {}).values()))
    where = f" on {' and '.join(machines)}" if machines else ""
    seeded = f" with --seed {report['seed']}" if report.get("seed") else ""
    text = (f"This run trained {size} through every stage of the `{report['recipe']}` recipe "
            f"({', '.join(stages)}){where}{seeded} in {sum(t.values()) / 60:.1f} minutes, evaluation included, and "
            f"checked {len(checked)} of the SmolLM3 recipe's claims on its checkpoints.")
    said = {HOLDS: ("holds", "hold"), FAILS: ("does not hold", "do not hold"),
            NOT_SHOWN: ("is not shown at this scale", "are not shown at this scale"),
            NOT_TESTED: ("could not be tested", "could not be tested")}
    parts = []
    for status, (one, many) in said.items():
        nums = [f"{c['number']} ({c['short']})" for c in checked if c["status"] == status]
        if nums:
            listed = nums[0] if len(nums) == 1 else ", ".join(nums[:-1]) + " and " + nums[-1]
            parts.append(f"{'claim' if len(nums) == 1 else 'claims'} {listed} {one if len(nums) == 1 else many}")
    if parts:
        joined = "; ".join(parts)
        text += f" {joined[0].upper()}{joined[1:]} (the table below says why)."
    elsewhere = sorted({c["why"].split(" — run ", 1)[1] for c in checked
                        if c["status"] == NOT_SHOWN and " — run " in c["why"]})
    if elsewhere:
        text += f" For the claims not shown here, run {' or '.join(elsewhere)}."
    return text


def _loss_notes(results: dict, facts: dict) -> list[str]:
    """A sentence under the validation-loss table when its numbers look wrong: above uniform guessing."""
    vocab = facts.get("vocab_size")
    if not vocab:
        return []
    uniform = math.log(vocab)
    above = [k for k, v in results.items() if "heldout" in v and
             sum(x["loss"] for x in v["heldout"].values()) / len(v["heldout"]) > uniform]
    if not above:
        return []
    note = (f"*Why is the loss of {', '.join(above)} above ln {vocab} = {uniform:.2f}, the loss of guessing every token "
            "uniformly?* These are chat checkpoints: SFT and APO train only on conversations in the chat template, "
            "with loss on the assistant's turns, and a model this small gives plain-text prediction up for it. ")
    seen = [(k, results[k]["plain_text"]) for k in above if results[k].get("plain_text")]
    if seen:
        mean = {k: sum(x["loss"] for x in results[k]["heldout"].values()) / len(results[k]["heldout"]) for k in above}
        note += ("Measured on the same text: " + "; ".join(
            f"{k} predicts with an entropy of {p['entropy']:.2f} nats against a mean loss of {mean[k]:.2f}, and puts "
            f"{p['template_mass']:.0%} of its probability on special and chat-template tokens" for k, p in seen) + ". ")
        if all(p["entropy"] < 0.5 * mean[k] for k, p in seen):
            note += "It is confidently wrong on plain text, not lost. "
    note += ("This table measures plain text without a template, which those models never see; what they were "
             "trained for is in the chat table below.")
    return [note, ""]


def write_plots(out: Path, recipe: dict, results: dict, facts: dict | None = None) -> list[str]:
    return plots.write_plots(out, recipe, results, _loss_curves(out, recipe), facts or {})


def write_report(recipe: dict, out: Path, report: dict) -> list[dict]:
    """Write OUT/report.md, OUT/report.json and the plots; -> the claims (see claims.claims)."""
    results = report.get("results", {})
    facts = model_facts(out, recipe)
    pre = recipe.get("report", {}).get("claims", {}).get("pretraining")
    first = (pre.get("checkpoints") if isinstance(pre, dict) else pre or ["?"])[0].split("/")[0] if pre else None
    checked = claims(results, recipe, epochs_read(out, recipe, first) if first else None)
    lines = [f"# Recipe `{report['recipe']}`", "", summary(recipe, report, checked, facts), ""]
    if checked:
        lines += ["## The recipe's claims, measured", "",
                  _table(["#", "claim", "numbers", "holds"],
                         [[c["number"], c["claim"], c["numbers"], _status_cell(c)] for c in checked]), "",
                  "A difference between two accuracies counts only when it exceeds two standard errors (each accuracy "
                  "over the number of items it was measured on); a claim that is not shown or not tested is never "
                  "counted as holding.", ""]
    lines += ["## What ran", "", recipe.get("description", "").strip(), ""]
    heldout = [k for k, v in results.items() if "heldout" in v]
    if heldout:
        names = sorted(results[heldout[0]]["heldout"])
        lines += ["## Validation loss (nats/token) per language and domain", "",
                  _table(["checkpoint", *names], [[k, *(results[k]["heldout"][n]["loss"] for n in names)]
                                                  for k in heldout]), "", *_loss_notes(results, facts)]
    retr = [k for k, v in results.items() if v.get("retrieval")]
    if retr:
        keys = list(dict.fromkeys(x for k in retr for x in results[k]["retrieval"]))
        chat_format = bool(recipe.get("evaluation", {}).get("chat", {}).get("retrieval"))
        lines += ["## Retrieval accuracy (RULER-style needle in a haystack)", "",
                  "Base checkpoints are given plain-text prompts ending in RULER's answer prefix; chat checkpoints "
                  + ("are asked the question as a user turn (`evaluation.chat.retrieval`)." if chat_format else
                     "get the same plain-text prompts (this recipe asks them no chat-format question)."), "",
                  _table(["checkpoint", *keys], [[k, *(results[k]["retrieval"].get(x) for x in keys)] for k in retr]),
                  ""]
        if max(v for k in retr for v in results[k]["retrieval"].values()) < 0.1:
            lines += ["Every cell is near zero: this model did not learn retrieval (claim 2 says why and where it is "
                      "shown).", ""]
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
    written = write_plots(out, recipe, results, facts)
    lines += ["## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in written] + [""]
    t = report.get("timings", {})
    lines += ["## Time (seconds)", "", _table(["step", "seconds"], [[k, round(v, 1)] for k, v in t.items()]), "",
              f"Total: {sum(t.values()) / 60:.1f} minutes.", ""]
    tmp = out / "report.md.tmp"
    tmp.write_text("\n".join(lines))
    os.replace(tmp, out / "report.md")
    report = report | {"claims": checked, "model": facts}
    (out / "report.json").write_text(json.dumps(report, indent=1))
    return checked
