"""Tool-call correctness: does the model call the right tool with the right arguments?

Items come from `smollm3.data.synthetic.generate("tool_xml" | "tool_python", N, seed=0)`: a user question that one
of five small deterministic tools answers exactly (all five are offered, so choosing is part of the task). The
prompt is the conversation up to the assistant's tool call (the user turn), rendered with the tools passed as the
record says (`xml_tools` for <tool_call> JSON, `python_tools` for <code> blocks). Three rates, each over all items:
  parses           the response holds a tool call we can read (for python: a call of one of the offered tools
                   inside a <code> block)
  right_function   ... and it calls the expected tool
  right_arguments  ... and with exactly the expected arguments (same keys; numbers equal within 1e-9)
"""

from __future__ import annotations

from smollm3.chat import render_chat
from smollm3.data.synthetic_tools import parse_call
from smollm3.infer.sampling import SamplingParams

STYLES = {"tool_xml": "xml", "tool_python": "python"}


def tool_prompt(item: dict, template: str, mode: str, date=None) -> str:
    """The prompt before the record's reference call; `date`: the "Today Date" the SmolLM3 template prints."""
    kwargs = dict(item["chat_template_kwargs"])
    kwargs["enable_thinking"] = mode == "think"
    # the record's first assistant message is the reference call: the model sees what comes before it
    first_call = next(i for i, m in enumerate(item["messages"]) if m["role"] == "assistant")
    return render_chat(item["messages"][:first_call], template=template, add_generation_prompt=True, date=date,
                       **kwargs)


def _same(a, b) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(a - b) < 1e-9
    return a == b


def score(item: dict, response: str) -> dict:
    """{"parses", "right_function", "right_arguments"} for one response; each implies the one before."""
    try:
        call = parse_call(response, STYLES[item["task"]])
    except (ValueError, TypeError, KeyError, SyntaxError):  # malformed arguments, odd literals: no usable call
        call = None
    if call is None:
        return {"parses": False, "right_function": False, "right_arguments": False}
    name, args = call
    want = item["call"]
    right_fn = name == want["name"]
    right_args = right_fn and isinstance(args, dict) and set(args) == set(want["arguments"]) and \
        all(_same(args[k], v) for k, v in want["arguments"].items())
    return {"parses": True, "right_function": right_fn, "right_arguments": right_args}


def run_tool(llm, items: list[dict], prompts: list[str], max_tokens: int) -> tuple[dict, list[dict]]:
    ids = [llm.tokenizer.encode(p) for p in prompts]  # the template wrote the special tokens already
    outs = llm.generate(ids, SamplingParams(max_tokens=max_tokens, temperature=0.0))
    samples, totals = [], {"parses": 0, "right_function": 0, "right_arguments": 0}
    for item, prompt, out in zip(items, prompts, outs):
        s = score(item, out.text)
        for k in totals:
            totals[k] += s[k]
        samples.append({"prompt": prompt, "response": out.text, "expected": item["call"], **s,
                        "finish_reason": out.finish_reason})
    return {k: v / len(items) for k, v in totals.items()} | {"n": len(items)}, samples
