"""Chat rendering: `template="official"` is byte-identical to the official SmolLM3-3B template rendered with jinja2,
`template="smollm3"` differs from it exactly as docs/chat-template.md says, `apply_chat_template` of a trained
tokenizer agrees with `render_chat` / `tokenize_chat`, and bad input is refused with a clear error."""

import json
from datetime import date, datetime
from pathlib import Path
from typing import ClassVar

import jinja2
import pytest
from jinja2 import nodes
from jinja2.ext import Extension
from jinja2.sandbox import ImmutableSandboxedEnvironment

from smollm3 import render_chat
from smollm3.chat import ChatError, chat_template, tokenize_chat
from smollm3.tokenizer import load_tokenizer

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "chat_templates"
DATE = date(2025, 7, 10)

# ---- the reference renderer: plain jinja2 configured as transformers configures it, independent of smollm3.chat


class _PassThroughGeneration(Extension):
    tags: ClassVar[set[str]] = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.CallBlock(self.call_method("_render", []), [], [], body).set_lineno(lineno)

    def _render(self, caller):
        return caller()


@pytest.fixture(scope="module")
def official():
    path = REFERENCE / "smollm3-3b.jinja"
    if not path.exists():
        pytest.skip(f"{path} not present (the shared reference directory is not part of the repository)")
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_PassThroughGeneration, jinja2.ext.loopcontrols])
    env.filters["tojson"] = lambda x, **kw: json.dumps(x, ensure_ascii=False, **kw)
    template = env.from_string(path.read_text())

    def render(messages, when=DATE, add_generation_prompt=False, **kwargs):
        return template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                               strftime_now=lambda fmt: when.strftime(fmt), **kwargs)

    return render


# ---- conversations

WEATHER = {"name": "get_weather", "description": "Get the current weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "City name"}},
                          "required": ["city"]}}
OPENAI_WEATHER = {"type": "function", "function": WEATHER}
STOCK = {"name": "get_stock_price", "description": "Latest price of a stock ticker",
         "parameters": {"type": "object", "properties": {"ticker": {"type": "string"}}, "required": ["ticker"]}}
CALC = {"name": "calculate", "description": "Evaluate an arithmetic expression, e.g. '2 * (3 + 4)'",
        "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]}}


def U(text):
    return {"role": "user", "content": text}


def A(text=None, **extra):
    return {"role": "assistant", "content": text, **extra}


def S(text):
    return {"role": "system", "content": text}


def T(text):
    return {"role": "tool", "content": text}


def call(name, arguments, as_string=True):
    return {"id": f"call_{name}", "type": "function",
            "function": {"name": name, "arguments": json.dumps(arguments) if as_string else arguments}}


GEN = {"add_generation_prompt": True}
NO_THINK = {"enable_thinking": False}

CONVERSATIONS = {
    "user_think": ([U("What is the capital of France?")], {}),
    "user_think_gen": ([U("What is the capital of France?")], GEN),
    "user_no_think": ([U("Hi")], NO_THINK),
    "user_no_think_gen": ([U("Hi")], {**NO_THINK, **GEN}),
    "system_custom": ([S("You are a pirate. Answer like one."), U("Where is the treasure?")], GEN),
    "system_custom_no_think_kwarg": ([S("You are a pirate."), U("Ahoy")], {**NO_THINK, **GEN}),
    "system_no_think_flag_beats_kwarg": ([S("Be terse. /no_think"), U("2+2?")], {"enable_thinking": True, **GEN}),
    "system_think_flag_beats_kwarg": ([S("/think"), U("Prove it.")], {**NO_THINK, **GEN}),
    "system_only_no_think_flag": ([S("/no_think"), U("Hello"), A("Hi there!")], {}),
    "system_empty": ([S(""), U("Hello")], GEN),
    "system_trailing_whitespace": ([S("  Answer in French.   \n\n"), U("Hello")], GEN),
    "system_override": ([S("Custom raw system /system_override"), U("Hi")], GEN),
    "system_override_no_think": ([S("Raw prompt /system_override /no_think"), U("Hi"), A("Hello."), U("Bye")], GEN),
    "system_override_ignores_tools": ([S("Raw /system_override"), U("Weather in Paris?")],
                                      {"xml_tools": [WEATHER], **GEN}),
    "xml_tools": ([U("What is the weather in Copenhagen?")], {"xml_tools": [WEATHER, STOCK], **GEN}),
    "openai_tools": ([S("You check weather."), U("Weather in Rome?")], {"tools": [OPENAI_WEATHER], **GEN}),
    "tools_win_over_xml_tools": ([U("Weather?")], {"tools": [OPENAI_WEATHER], "xml_tools": [STOCK], **GEN}),
    "python_tools": ([U("What is 17 * 23?")], {"python_tools": [CALC], **GEN}),
    "xml_and_python_tools_no_think": ([U("Weather and maths")], {"xml_tools": [WEATHER], "python_tools": [CALC],
                                                                 **NO_THINK, **GEN}),
    "string_tool_specs": ([U("Weather?")], {"xml_tools": ["get_weather(city: str) -> str"],
                                            "python_tools": ["calculate(expression: str) -> float"], **GEN}),
    "empty_tools_list": ([U("Hi")], {"tools": [], "xml_tools": [], **GEN}),
    "multi_turn_think": ([U("Hi"), A("Hello! How can I help?"), U("Tell me a joke."), A("Why did the chicken...")],
                         {}),
    "multi_turn_no_think_gen": ([S("Be kind."), U("Hi"), A("Hello!"), U("And now?")], {**NO_THINK, **GEN}),
    "history_reasoning": ([U("2+2?"), A("<think>\nTwo plus two.\n</think>\n4"), U("3+3?"),
                           A("<think>\nThree plus three.\n</think>\n6")], {}),
    "history_reasoning_no_think": ([U("2+2?"), A("<think>\nadd\n</think>\n4"), U("3+3?")], {**NO_THINK, **GEN}),
    "assistant_leading_newlines": ([U("Hi"), A("\n\nHello there")], {}),
    "tool_role_result": ([U("Weather in Paris?"),
                          A('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'),
                          T('{"temperature": 21}')], {"xml_tools": [WEATHER], **GEN}),
    "assistant_tool_calls": ([U("Weather in Copenhagen?"), A(None, tool_calls=[call("get_weather", {"city": "Copenhagen"})]),
                              T("sunny, 22°C"), A("It is sunny and 22°C in Copenhagen.")], {"tools": [OPENAI_WEATHER]}),
    "parallel_tool_calls": ([U("Weather in Paris and Rome?"),
                             A(None, tool_calls=[call("get_weather", {"city": "Paris"}),
                                                 call("get_weather", {"city": "Rome"}, as_string=False)]),
                             T("rain"), T("sun")], {"tools": [OPENAI_WEATHER], **NO_THINK, **GEN}),
    "tool_calls_with_content": ([U("Price of HF?"), A("Let me look that up.\n",
                                                      tool_calls=[{"function": {"name": "get_stock_price",
                                                                                "arguments": {"ticker": "HF"}}}]),
                                 T("123.4")], {"xml_tools": [STOCK], **GEN}),
    "reasoning_content_final_turn": ([U("Is 91 prime?"), A("No: 91 = 7 × 13.", reasoning_content="Try 7: 7*13=91.")],
                                     {}),
    "reasoning_content_no_think": ([U("Is 91 prime?"), A("No.", reasoning_content="7*13")], NO_THINK),
    "agentic_loop_keeps_reasoning": ([U("Weather in Oslo?"),
                                      A("<think>\nI should call the tool.\n</think>\n",
                                        tool_calls=[call("get_weather", {"city": "Oslo"})]),
                                      T("snow"), A("<think>\nIt snows.\n</think>\nIt is snowing in Oslo.")],
                                     {"tools": [OPENAI_WEATHER]}),
    "python_code_history": ([U("17 * 23?"), A("<code>calculate(expression='17 * 23')</code>"), T("391")],
                            {"python_tools": [CALC], **GEN}),
    "later_system_dropped": ([U("Hi"), S("New rules."), A("Hello"), U("Bye")], GEN),
    "unicode": ([S("Réponds en français 🇫🇷"), U("¿Qué tal? Wie geht's? Come va? Tudo bem? 你好 🙂"),
                 A("Très bien, merci ! 😊")], {}),
}


def official_equivalent(messages, kwargs):
    """Fixes 1-4 of docs/chat-template.md as a rewrite of the input: the official template renders the rewritten
    conversation exactly as ours renders the original (fixes 5 and 6 are text insertions, see `expected_smollm3`)."""
    system = messages[0]["content"] if messages[0]["role"] == "system" else ""
    think = "/no_think" not in system and ("/think" in system or kwargs.get("enable_thinking", True))
    last_user = max([i for i, m in enumerate(messages) if m["role"] == "user"], default=-1)
    out = []
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            text = m.get("content") or ""
            if i < last_user:  # fix 3: earlier reasoning dropped
                text = text.split("</think>")[-1]
            elif think and m.get("reasoning_content") and "<think>" not in text:
                text = "<think>\n" + m["reasoning_content"].strip("\n") + "\n</think>\n" + text.lstrip("\n")
            for c in m.get("tool_calls") or []:  # fix 1: tool_calls as <tool_call> blocks
                fn = c.get("function", c)
                args = fn["arguments"] if isinstance(fn["arguments"], str) else json.dumps(fn["arguments"],
                                                                                            ensure_ascii=False)
                text += ("\n" if text and not text.endswith("\n") else "")
                text += '<tool_call>\n{"name": ' + json.dumps(fn["name"]) + ', "arguments": ' + args + "}\n</tool_call>"
            out.append({"role": "assistant", "content": text})
        elif m["role"] == "tool":  # fix 2: tool results wrapped, consecutive ones in one user turn
            block = "<tool_response>\n" + m["content"] + "\n</tool_response>"
            if i > 0 and messages[i - 1]["role"] == "tool":
                out[-1]["content"] += "\n" + block
            else:
                out.append({"role": "user", "content": block})
        else:
            out.append(dict(m))
    kwargs = dict(kwargs)
    for key in ("xml_tools", "python_tools", "tools"):  # fix 4: tool specs as JSON
        if kwargs.get(key):
            kwargs[key] = [t if isinstance(t, str) else json.dumps(t, ensure_ascii=False) for t in kwargs[key]]
    return out, kwargs


def expected_smollm3(official, messages, kwargs):
    rewritten, rewritten_kwargs = official_equivalent(messages, kwargs)
    text = official(rewritten, **rewritten_kwargs)
    text = text.replace("</tool_call>When you send", "</tool_call>\n\nWhen you send", 1)  # fix 6
    end = text.find("<|im_start|>", 1)
    end = len(text) if end < 0 else end
    if not text[:end].endswith("<|im_end|>\n"):  # fix 5: the system turn is always closed
        text = text[:end] + "<|im_end|>\n" + text[end:]
    return text


# ---- acceptance 1: official byte-identical; ours differs only as documented


def test_there_are_at_least_30_conversations():
    assert len(CONVERSATIONS) >= 30


@pytest.mark.parametrize("name", CONVERSATIONS)
def test_official_is_byte_identical_to_the_reference_template(official, name):
    messages, kwargs = CONVERSATIONS[name]
    assert render_chat(messages, template="official", date=DATE, **kwargs) == official(messages, **kwargs)


@pytest.mark.parametrize("name", CONVERSATIONS)
def test_smollm3_differs_from_official_only_as_documented(official, name):
    messages, kwargs = CONVERSATIONS[name]
    assert render_chat(messages, date=DATE, **kwargs) == expected_smollm3(official, messages, kwargs)


def test_official_on_another_date_and_as_a_template_string(official):
    when = date(2026, 1, 5)  # zero-padded day, another month
    messages, kwargs = CONVERSATIONS["xml_and_python_tools_no_think"]
    ours = render_chat(messages, template="official", date=when, **kwargs)
    assert "Today Date: 05 January 2026\n" in ours
    assert ours == official(messages, when=when, **kwargs)
    # any template string renders too, e.g. the official file itself
    source = (REFERENCE / "smollm3-3b.jinja").read_text()
    assert render_chat(messages, template=source, date=when, **kwargs) == ours


def test_the_fixes_render_what_the_docs_show():
    messages, kwargs = CONVERSATIONS["assistant_tool_calls"]
    text = render_chat(messages, date=DATE, **kwargs)
    assert ('<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Copenhagen"}}\n'
            '</tool_call><|im_end|>\n<|im_start|>user\n<tool_response>\nsunny, 22°C\n</tool_response><|im_end|>\n'
            '<|im_start|>assistant\nIt is sunny and 22°C in Copenhagen.<|im_end|>\n') in text
    assert '<tools>\n{"type": "function", "function": {"name": "get_weather", ' in text  # JSON, not a Python repr
    no_tools = render_chat([U("Hi")], enable_thinking=False, date=DATE)
    assert no_tools.endswith("trained by Hugging Face.\n\n<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n")
    history = render_chat(CONVERSATIONS["history_reasoning"][0], date=DATE)
    assert "Two plus two" not in history and "<|im_start|>assistant\n4<|im_end|>" in history
    assert "<think>\nThree plus three.\n</think>\n6<|im_end|>" in history  # the last turn keeps its reasoning


def test_the_official_template_source_is_ours_with_the_fixes_off():
    assert chat_template("official").endswith(chat_template("smollm3"))
    assert "official_format" in chat_template("smollm3")
    with pytest.raises(ChatError, match="unknown template 'chatmI'"):
        render_chat([U("Hi")], template="chatmI")
    # chatml (reasoning mid-training): plain turns, every token inside generation tags
    assert render_chat([U("Hi")], template="chatml", add_generation_prompt=True) == \
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


# ---- acceptance 2: transformers' apply_chat_template of a trained tokenizer = render_chat / tokenize_chat

PARITY = list(CONVERSATIONS)


@pytest.fixture(scope="module")
def tokenizers(trained_tokenizer_dir):
    transformers = pytest.importorskip("transformers")
    return load_tokenizer(trained_tokenizer_dir), transformers.AutoTokenizer.from_pretrained(trained_tokenizer_dir)


@pytest.mark.parametrize("name", PARITY)
def test_apply_chat_template_matches_render_chat_and_mask(tokenizers, name):
    ours, hf = tokenizers
    messages, kwargs = CONVERSATIONS[name]
    today = datetime.now()  # transformers prints today's date; so do we when date is None
    text = hf.apply_chat_template(messages, tokenize=False, **kwargs)
    if datetime.now().date() != today.date():
        pytest.skip("rendered across midnight")
    assert text == render_chat(messages, date=today, **kwargs)
    out = hf.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True,
                                 **kwargs)
    ids, mask = tokenize_chat(ours, messages, date=today, **kwargs)
    assert ids == list(out["input_ids"])
    assert mask == list(out["assistant_masks"])
    assistant_turns = sum(m["role"] == "assistant" for m in messages)
    assert (sum(mask) > 0) == (assistant_turns > 0)


@pytest.mark.parametrize("name", ["assistant_tool_calls", "history_reasoning", "system_only_no_think_flag"])
def test_official_template_mask_matches_transformers(tokenizers, name):
    ours, hf = tokenizers
    messages, kwargs = CONVERSATIONS[name]
    today = datetime.now()
    out = hf.apply_chat_template(messages, chat_template=chat_template("official"), tokenize=True, return_dict=True,
                                 return_assistant_tokens_mask=True, **kwargs)
    ids, mask = tokenize_chat(ours, messages, template="official", date=today, **kwargs)
    assert (ids, mask) == (list(out["input_ids"]), list(out["assistant_masks"]))


def test_mask_covers_exactly_the_assistant_turns(tokenizers):
    ours, _ = tokenizers
    messages = [S("Be brief."), U("Hi"), A("Hello!"), U("Bye"), A("<think>\nok\n</think>\nGoodbye.")]
    ids, mask = tokenize_chat(ours, messages, date=DATE)
    masked = ours.decode([i for i, m in zip(ids, mask) if m])
    assert masked == ("<|im_start|>assistant\nHello!<|im_end|>\n"
                      "<|im_start|>assistant\n<think>\nok\n</think>\nGoodbye.<|im_end|>\n")
    assert ours.decode(ids) == render_chat(messages, date=DATE)
    ids_gen, mask_gen = tokenize_chat(ours, messages[:4], add_generation_prompt=True, date=DATE)
    assert ours.decode(ids_gen).endswith("<|im_start|>assistant\n") and sum(mask_gen) < sum(mask)


# ---- acceptance 5: bad input


@pytest.mark.parametrize("messages, kwargs, match", [
    ([{"role": "robot", "content": "beep"}], {}, r"messages\[0\] has role 'robot'; the roles are system, user"),
    ([{"content": "no role"}], {}, r"messages\[0\] has role None"),
    ([U("Hi"), {"role": "user", "content": [{"type": "text", "text": "Hi"}]}], {},
     r"messages\[1\] \(user\) content must be a string, got list"),
    ([U(42)], {}, r"content must be a string, got int 42"),
    ([{"role": "user"}], {}, r"messages\[0\] \(user\) has no 'content'"),
    ([A(None)], {}, r"only an assistant message with tool_calls may omit it"),
    ([], {}, r"messages must be a non-empty list"),
    ("Hi", {}, r"messages must be a non-empty list of dicts, got str"),
    (["Hi"], {}, r"messages\[0\] must be a dict"),
    ([U("Hi")], {"tools": WEATHER}, r"tools must be a list of tool specs .* got dict"),
    ([U("Hi")], {"xml_tools": "get_weather"}, r"xml_tools must be a list .* wrap a single tool in a list"),
    ([U("Hi")], {"python_tools": [len]}, r"python_tools\[0\] must be a dict \(a JSON schema\) or a string"),
    ([U("Hi"), A(None, tool_calls={"name": "f"})], {}, r"messages\[1\]\.tool_calls must be a list"),
    ([U("Hi"), A(None, tool_calls=[{"function": {"arguments": "{}"}}])], {}, r"tool_calls\[0\] must look like"),
    ([U("Hi"), A(None, tool_calls=[{"function": {"name": "f", "arguments": "{city: Paris}"}}])], {},
     r"arguments are not valid JSON"),
    ([U("Hi"), A(None, tool_calls=[{"function": {"name": "f", "arguments": "[1, 2]"}}])], {},
     r"arguments must be a JSON object"),
    ([U("Hi"), {"role": "tool", "content": "x", "tool_calls": [call("f", {})]}], {}, r"only assistant messages"),
    ([U("Hi")], {"enable_thinking": "no"}, r"enable_thinking must be True or False"),
    ([U("Hi")], {"date": "2025-07-10"}, r"date must be a datetime.date"),
])
def test_bad_input_gets_a_clear_error(messages, kwargs, match):
    with pytest.raises(ChatError, match=match):
        render_chat(messages, **kwargs)


def test_bad_input_is_refused_by_tokenize_chat_too(tokenizers):
    with pytest.raises(ChatError, match="has role 'robot'"):
        tokenize_chat(tokenizers[0], [{"role": "robot", "content": "beep"}])
    with pytest.raises(ChatError, match="tools must be a list"):
        tokenize_chat(tokenizers[0], [U("Hi")], tools=WEATHER)
