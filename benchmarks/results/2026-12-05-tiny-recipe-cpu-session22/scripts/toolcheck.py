import sys, torch
from pathlib import Path
from smollm3.checkpoint import load_pretrained
from smollm3.data import synthetic
from smollm3.eval.toolcall import tool_prompt, score
from smollm3.infer.llm import LLM
from smollm3.infer import SamplingParams
from smollm3.recipe.build import with_system

d = Path(sys.argv[1]); n = int(sys.argv[2]) if len(sys.argv) > 2 else 40
llm = LLM(d, device="cpu", dtype=torch.float32, max_num_seqs=n)
items = [with_system(it, "You are a helpful assistant.") for it in synthetic.generate("tool_xml", n, seed=1000, think=False, offered=2)]
prompts = [tool_prompt(it, llm.chat_template, "no_think") for it in items]
ids = [llm.tokenizer.encode(p) for p in prompts]
outs = llm.generate(ids, SamplingParams(max_tokens=80, temperature=0.0))
import os
if os.environ.get("NAIVE") != "1":
    bad = [(it, o.text) for it, o in zip(items, outs) if not score(it, o.text)["right_function"]]
    for it, t in bad[:6]: print("EXPECTED", it["call"]); print("GOT", repr(t[:300])); print()
    print(len(bad)); raise SystemExit
model = load_pretrained(d, device="cpu", dtype=torch.float32).eval()
eos = set(llm.engine.eos_token_ids) if hasattr(llm, "engine") else set()
same = 0; s_eng = s_ref = 0
for it, x, o in zip(items, ids, outs):
    seq = list(x); gen = []
    with torch.no_grad():
        for _ in range(80):
            out = model(torch.tensor([seq])); logits = getattr(out, "logits", out)
            t = int(logits[0, -1].argmax())
            if t in eos: break
            gen.append(t); seq.append(t)
    same += gen == list(o.output_ids[:len(gen)]) and len(gen) >= len([t for t in o.output_ids if t not in eos])
    s_eng += score(it, o.text)["right_function"]; s_ref += score(it, llm.tokenizer.decode(gen))["right_function"]
print(f"engine == naive greedy: {same}/{n}; right_function engine {s_eng / n:.3f} naive {s_ref / n:.3f}; eos {eos}")
bad = [(it, o.text) for it, o in zip(items, outs) if not score(it, o.text)["right_function"]]
for it, t in bad[:6]:
    print("EXPECTED", it["call"]); print("GOT", repr(t[:300])); print()
