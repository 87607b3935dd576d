"""The LM head's chunked cross-entropy on the autocast path (fp32 weight with .grad, bf16 GEMMs: compiled and
checkpointed runs, FSDP2), its backward recomputing the chunks' logits (stored_dlogits_bytes 0, as at 64k): the
weight gradient added chunk by chunk as before session 31 (`grad_weight += g.T @ r`: a bf16 GEMM, then an fp32 +
bf16 pass over the 1 GiB gradient) and as now (`accumulate_wgrad`: the GEMM adds into the fp32 buffer itself).
Forward + backward, alternated three times in one process, median of 5 each time; the gradients compared.

    PYTHONPATH=src python3 ce_autocast.py OUT.json
"""
import json
import statistics
import sys

import torch

from smollm3.ops import cross_entropy as CE


def old_accumulate(grad, dy, x):
    grad += dy.T @ x


def main():
    dev = torch.device("cuda")
    torch.manual_seed(0)
    V, D = 128256, 2048
    weight = (torch.randn(V, D, device=dev) * 0.02).requires_grad_()
    res = {"device": torch.cuda.get_device_name(), "rows": {}}
    new_accumulate = CE.accumulate_wgrad
    for T in (32768, 65536):
        hidden = torch.randn(T, D, device=dev, dtype=torch.bfloat16, requires_grad=True)
        labels = torch.randint(0, V, (T,), device=dev)

        def step(hidden=hidden, labels=labels):
            weight.grad = hidden.grad = None
            with torch.autocast("cuda", dtype=torch.bfloat16):
                nll = CE.chunked_cross_entropy(hidden, weight, labels, reduction="none", stored_dlogits_bytes=0)
            nll.sum().backward()

        times, grads = {"before": [], "now": []}, {}
        for _ in range(3):
            for name, fn in (("before", old_accumulate), ("now", new_accumulate)):
                CE.accumulate_wgrad = fn
                step()
                runs = []
                for _ in range(5):
                    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    a.record()
                    step()
                    b.record()
                    b.synchronize()
                    runs.append(a.elapsed_time(b))
                times[name].append(statistics.median(runs))
                grads[name] = weight.grad.clone()
        CE.accumulate_wgrad = new_accumulate
        rel = float((grads["now"] - grads["before"]).norm() / grads["now"].norm())
        row = {"before_ms": [round(t, 2) for t in times["before"]], "now_ms": [round(t, 2) for t in times["now"]],
               "saved_ms": round(statistics.median(times["before"]) - statistics.median(times["now"]), 2),
               "weight_grad_rel_diff": rel}
        print(T, row, flush=True)
        res["rows"][T] = row
    json.dump(res, open(sys.argv[1], "w"), indent=1)


if __name__ == "__main__":
    main()
