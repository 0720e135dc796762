"""The LM head of one generation step: the last position taken by a slice (what ``generate`` does with
``logits_to_keep=1``) against an index (what the engine passes, ``thinchat.generation.last_position_logits``).

Why: a slice ``hidden[:, -1:, :]`` of a [batch, prompt, width] hidden state keeps the prompt's batch
stride, so ``torch.matmul`` cannot fold it into one matrix product; it runs a batched product against the
weight expanded per row, and on a CPU the bf16 kernel copies that weight first. An index returns a
contiguous copy that folds. The physical limit is one pass over the weight: its bytes over the memory
bandwidth (the bench reports the weight bytes; a whole vocabulary in bf16 is 0.3-0.5 GB).

    python bench/bench_lm_head.py [--rows 1,8] [--prompt 300] [--dtypes float32,bfloat16] [--repeats 3]

Prints JSON: seconds per call for each LM head shape (Gemma3's 262,145 x 640, SmolLM2's 49,152 x 576),
row count, dtype and way, and the slice's time over the index's.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

#: (name, vocabulary, width) of the LM heads the quickstarts use.
HEADS = (("gemma3-270m", 262_145, 640), ("smollm2-135m", 49_152, 576))


def seconds_per_call(fn, repeats: int) -> float:
    """Best of ``repeats`` timed calls after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", default="1,8", help="comma-separated batch rows (answers in a batch)")
    parser.add_argument("--prompt", type=int, default=300, help="prompt length the hidden state spans")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--heads", default="all", help="'all' or one head name (tests: a tiny shape)")
    args = parser.parse_args(argv)

    import torch
    import torch.nn.functional as F

    heads = HEADS if args.heads == "all" else (("tiny", 64, 16),)
    results = []
    for name, vocab, width in heads:
        for dtype_name in args.dtypes.split(","):
            dtype = getattr(torch, dtype_name)
            weight = torch.randn(vocab, width, dtype=dtype)
            for rows in (int(r) for r in args.rows.split(",")):
                hidden = torch.randn(rows, args.prompt, width, dtype=dtype)
                ways = {
                    "slice": hidden[:, -1:, :],
                    "index": hidden[:, torch.tensor([-1]), :],
                }
                timed = {
                    way: seconds_per_call(lambda x=x, w=weight: F.linear(x, w), args.repeats)
                    for way, x in ways.items()
                }
                results.append(
                    {
                        "head": name,
                        "vocab": vocab,
                        "width": width,
                        "dtype": dtype_name,
                        "rows": rows,
                        "weight_bytes": weight.numel() * weight.element_size(),
                        "slice_s": float(f"{timed['slice']:.3g}"),
                        "index_s": float(f"{timed['index']:.3g}"),
                        "slice_over_index": round(timed["slice"] / max(timed["index"], 1e-9), 1),
                    }
                )
    machine = {"cpu": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads()}
    print(
        json.dumps(
            {"bench": "lm_head", "machine": machine, "prompt": args.prompt, "results": results}, indent=1
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
