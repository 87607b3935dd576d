"""The recipe's claims, checked against a run's numbers (the `report.claims` section of a recipe YAML names the
checkpoints and lengths to compare). Each claim ends in one of three states:

    holds                     the numbers show the effect
    does not hold             they do not
    not shown at this scale   the precondition is missing (the model never learned retrieval); the report says
                              why, measured, and where the claim is shown
    not tested                the effect had nothing to act on (APO lost no long-context accuracy: nothing to
                              recover)

A difference between two accuracies counts only when it exceeds two standard errors of the difference (each
accuracy over the n items it was measured on): one needle of thirty is not a rise."""

from __future__ import annotations

import math

HOLDS, FAILS, NOT_SHOWN, NOT_TESTED = "holds", "does not hold", "not shown at this scale", "not tested"
SKILL = 0.5  # an accuracy at or above this counts as a learned skill (retrieval: chance is ~0)


def beyond_noise(low: float, high: float, n: int) -> bool:
    """high - low > 2 standard errors of the difference of two accuracies over n items each (add-one smoothed, so
    that 0/n against 1/n is not a certainty)."""
    p = (low * n + high * n + 1) / (2 * n + 2)
    return high - low > 2 * math.sqrt(2 * p * (1 - p) / n)


def _get(results: dict, label: str, *keys):
    node = results.get(label)
    for k in keys:
        node = node.get(k) if isinstance(node, dict) else None
    return node


SHORT = {1: "pretraining stages", 2: "long context", 3: "think mode", 4: "tool calls", 5: "APO", 6: "merge"}


def _claim(number: int, claim: str, numbers: str, status: str, why: str = "") -> dict:
    return {"number": number, "short": SHORT[number], "claim": claim, "numbers": numbers, "status": status,
            "holds": {HOLDS: True, FAILS: False}.get(status), "why": why}


def _arrow(values, fmt="{:.3f}") -> str:
    return " → ".join(fmt.format(v) for v in values)


# ------------------------------------------------------------------------------------------------------------------
# 1. pretraining stages


def mixture_shares(recipe: dict, stage_name: str, sources: list[str]) -> list[dict[str, float]] | None:
    """{source: share of the mixture} for each data stage of training stage `stage_name` (inline YAML only)."""
    stage = next((s for s in recipe["stages"] if s["name"] == stage_name), None)
    data_stages = (((stage or {}).get("train") or {}).get("data") or {}).get("stages")
    if not data_stages or not all(isinstance(d.get("weights"), dict) for d in data_stages):
        return None
    out = []
    for d in data_stages:
        total = sum(d["weights"].values())
        out.append({s: d["weights"].get(s, 0.0) / total for s in sources})
    return out


def pretraining_claim(results: dict, recipe: dict, c: dict, epochs: dict | None = None) -> dict | None:
    labels = c["checkpoints"]
    if not all("heldout" in results.get(x, {}) for x in labels):
        return None
    text = ("pretraining stages: the shares of " + " and ".join(n.split("/")[0] for n in c.get("rising", {})) + " rise at stages 2 and 3 and "
            "their held-out loss falls at each stage; the decay lowers held-out loss in every language and domain "
            "against the end of stage 2")
    names = sorted(results[labels[0]]["heldout"])
    loss = {n: [_get(results, x, "heldout", n, "loss") for x in labels] for n in names}
    rising = c.get("rising", {})  # held-out name -> mixture source
    shares = mixture_shares(recipe, labels[0].split("/")[0], list(rising.values()))
    parts, failed = [], []
    for name, source in rising.items():
        s = [d[source] for d in shares] if shares else None
        if s is None or len(s) != len(labels):
            failed.append(f"{name}: no mixture share found for {source}")
        elif not all(a < b for a, b in zip(s, s[1:])):
            failed.append(f"{name}'s share does not rise")
        v = loss.get(name)
        if v is None or None in v:
            failed.append(f"no held-out loss for {name}")
            continue
        if not all(a > b for a, b in zip(v, v[1:])):
            failed.append(f"{name} loss does not fall at each stage")
        parts.append(f"{name}: share " + (_arrow([x * 100 for x in s], "{:.0f}%") if s else "?") +
                     f", loss {_arrow(v)}")
    drops = {n: v[-2] - v[-1] for n, v in loss.items() if None not in v}
    worse = sorted(n for n, d in drops.items() if not d > 0)
    for n in worse:  # repeated text is the usual cause at this scale: say how often the run saw it
        seen = (epochs or {}).get(n)
        failed.append(f"the decay raises {n} ({loss[n][-2]:.3f} → {loss[n][-1]:.3f})" +
                      (f"; its training text was seen {seen:.1f} times by the end" if seen else ""))
    if drops:
        lo, hi = min(drops, key=drops.get), max(drops, key=drops.get)
        parts.append(f"decay against the end of stage 2: {len(drops) - len(worse)} of {len(drops)} lower "
                     f"({hi} {-drops[hi]:+.3f} … {lo} {-drops[lo]:+.3f})")
    ok = not failed and bool(drops) and bool(rising)
    return _claim(1, text, "; ".join(parts), HOLDS if ok else FAILS, "; ".join(failed))


# ------------------------------------------------------------------------------------------------------------------
# 2. long context


def _not_shown(reason: str, elsewhere: str | None) -> str:
    return reason + (f" — run {elsewhere}" if elsewhere else "")


def long_context_claim(results: dict, c: dict, n: int) -> dict | None:
    before, after, at, yarn_at = c["before"], c["after"], c["at"], c.get("yarn_at")
    r0, r1 = _get(results, before, "retrieval") or {}, _get(results, after, "retrieval") or {}
    if at not in r0 or at not in r1:
        return None
    text = f"long context: retrieval at {at} rises after the long-context stages" + (
        f"; with YaRN it holds at {yarn_at}" if yarn_at else "")
    a, b, held = r0[at], r1[at], r1.get(yarn_at)
    numbers = f"{before} {a:.2f} → {after} {b:.2f}" + (f"; {after} at {yarn_at}: {held:.2f}" if held is not None
                                                      else "") + f" ({n} needles each)"
    best = max([*r0.values(), *r1.values()])
    if best < SKILL:
        v, label, key = max((v, label, k) for label, r in ((before, r0), (after, r1)) for k, v in r.items())
        best = f"best {v:.2f}, {label} at {key}" if v > 0 else f"every accuracy {v:.2f}"
        return _claim(2, text, numbers, NOT_SHOWN, _not_shown(
            f"neither {before} nor {after} retrieves at any length ({best}): this model did not learn retrieval, "
            "so the long-context stages have nothing to extend", c.get("elsewhere")))
    failed = []
    if not beyond_noise(a, b, n):
        failed.append(f"no rise beyond noise at {at}")
    if yarn_at:
        if held is None:
            failed.append(f"{yarn_at} not measured")
        elif not (held >= 0.8 * b and held > 0):
            failed.append(f"with YaRN {held:.2f} at {yarn_at} is under 80% of {b:.2f}")
    return _claim(2, text, numbers, FAILS if failed else HOLDS, "; ".join(failed))


# ------------------------------------------------------------------------------------------------------------------
# 3-5. chat checkpoints


def think_claim(results: dict, labels: list[str]) -> dict | None:
    have = [x for x in labels if "math" in results.get(x, {})]
    if not have:
        return None
    text = "think mode beats no_think on held-out math after SFT" + (
        f" (checked on {' and '.join(labels)})" if len(labels) > 1 else "")
    failed, parts = [f"{x} not measured" for x in labels if x not in have], []
    for x in have:
        m = results[x]["math"]
        n = m.get("n", 100)
        parts.append(f"{x}: think {m['think']:.2f}, no_think {m['no_think']:.2f}")
        if not beyond_noise(m["no_think"], m["think"], n):
            failed.append(f"{x}: think does not beat no_think beyond noise ({n} questions)")
    return _claim(3, text, "; ".join(parts), FAILS if failed else HOLDS, "; ".join(failed))


TOOL_FORMATS = ("tool_xml", "tool_python")


def tools_claim(results: dict, labels: list[str]) -> dict | None:
    have = [x for x in labels if "tools" in results.get(x, {})]
    if not have:
        return None
    text = "≥ 90% of tool calls are well-formed with the right function, in both xml and python tool formats" + (
        f" (checked on {' and '.join(labels)})" if len(labels) > 1 else "")
    failed, parts = [f"{x} not measured" for x in labels if x not in have], []
    for x in have:
        t = results[x]["tools"]
        cells = []
        for f in TOOL_FORMATS:
            s = t.get(f)
            if s is None:
                failed.append(f"{x}: {f} not measured")
                continue
            rate = min(s["parses"], s["right_function"])
            cells.append(f"{f.removeprefix('tool_')} {rate:.2f}")
            if rate < 0.9:
                failed.append(f"{x}: {f.removeprefix('tool_')} {rate:.2f} < 0.90")
        parts.append(f"{x}: " + ", ".join(cells))
    return _claim(4, text, "; ".join(parts) + " (share both well-formed and naming the right function)",
                  FAILS if failed else HOLDS, "; ".join(failed))


def apo_claim(results: dict, c: dict) -> dict | None:
    a, b = _get(results, c["before"], "preference", "margin"), _get(results, c["after"], "preference", "margin")
    if a is None or b is None:
        return None
    return _claim(5, "APO raises the held-out chosen-over-rejected log-probability margin",
                  f"{c['before']} {a:.2f} → {c['after']} {b:.2f} nats", HOLDS if b > a else FAILS,
                  "" if b > a else "the margin does not rise")


# ------------------------------------------------------------------------------------------------------------------
# 6. the merge


def merge_claim(results: dict, c: dict, n: int) -> dict | None:
    ref, apo, merged, at = c["reference"], c["before"], c["after"], c["at"]
    acc = [_get(results, x, "retrieval", at) for x in (ref, apo, merged)]
    margin = [_get(results, x, "preference", "margin") for x in (ref, apo, merged)]
    if None in acc:
        return None
    text = (f"the merge recovers long-context ability ({at}) that APO cost, while keeping most of APO's margin gain")
    numbers = ", ".join(f"{x} {v:.2f}" for x, v in zip((ref, apo, merged), acc)) + f" ({n} needles each)"
    if None not in margin:
        numbers += "; margin " + ", ".join(f"{x} {v:.2f}" for x, v in zip((ref, apo, merged), margin))
    r, a, m = acc
    if r < SKILL:
        return _claim(6, text, numbers, NOT_SHOWN, _not_shown(
            f"{ref} retrieves {r:.2f} at {at}: no long-context ability for APO to cost", c.get("elsewhere")))
    if not beyond_noise(a, r, n):
        return _claim(6, text, numbers, NOT_TESTED,
                      f"APO lost nothing: {ref} {r:.2f}, {apo} {a:.2f} at {at}, a difference within noise")
    failed = []
    if not beyond_noise(a, m, n):
        failed.append(f"the merge does not recover beyond noise ({apo} {a:.2f}, {merged} {m:.2f})")
    if None in margin:
        failed.append("margins not measured")
    else:
        gain, kept = margin[1] - margin[0], margin[2] - margin[0]
        if gain <= 0:
            failed.append("APO raised no margin to keep")
        elif kept < 0.5 * gain:
            failed.append(f"the merge keeps {kept / gain:.0%} of APO's margin gain (under half)")
        else:
            numbers += f" (keeps {kept / gain:.0%} of the gain)"
    return _claim(6, text, numbers, FAILS if failed else HOLDS, "; ".join(failed))


# ------------------------------------------------------------------------------------------------------------------


def _retrieval_n(recipe: dict, chat: bool) -> int:
    ev = recipe.get("evaluation", {})
    spec = (ev.get("chat", {}).get("retrieval") if chat else None) or ev.get("base", {}).get("retrieval") or {}
    return int(spec.get("n", 50))


def claims(results: dict, recipe: dict, epochs: dict | None = None) -> list[dict]:
    """[{number, claim, numbers, status, holds (True / False / None: not shown), why}] for the six claims of the
    SmolLM3 recipe the miniature measures, those the recipe's `report.claims` section configures and the results
    cover. `epochs` ({held-out name: times its training text was read}) explains a held-out loss that rises."""
    c = recipe.get("report", {}).get("claims", {})
    out = []
    if c.get("pretraining"):
        pre = c["pretraining"]
        out.append(pretraining_claim(results, recipe, pre if isinstance(pre, dict) else {"checkpoints": pre}, epochs))
    if c.get("long_context"):
        out.append(long_context_claim(results, c["long_context"], _retrieval_n(recipe, chat=False)))
    if c.get("sft"):
        labels = [c["sft"], *([c["final"]] if c.get("final") else [])]
        out += [think_claim(results, labels), tools_claim(results, labels)]
    if c.get("apo"):
        out.append(apo_claim(results, c["apo"]))
    if c.get("merge"):
        out.append(merge_claim(results, c["merge"], _retrieval_n(recipe, chat=True)))
    return [x for x in out if x]
