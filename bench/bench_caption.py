"""Captions per second of ``thinchat caption``'s batched generation on CPU, against batch size 1, per
weights dtype (``--dtypes float32,bfloat16``: whether ``--dtype bfloat16`` pays for this model on this
host; docs/experiments.md, Evaluation speed).

Runs the real captioning path (image loading, chat template, left-padded batched greedy generation,
append + fsync of rows) on synthetic slides. Every caption is forced to exactly ``--max-new-tokens``
tokens (``min_new_tokens``) so batch sizes do the same work. Without ``--from_pretrained`` a tiny random
Llava is used, which measures overhead rather than model speed; pass a real checkpoint for real numbers.

    python bench/bench_caption.py [--from_pretrained CKPT] [--n-slides 16] [--batch-sizes 1,8] \
        [--dtypes float32,bfloat16]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--from_pretrained", default=None, help="checkpoint dir (default: tiny random Llava)")
    parser.add_argument("--n-slides", type=int, default=16)
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtypes", default="float32", help="comma-separated weights dtypes to time")
    parser.add_argument("--image-size", type=int, default=64, help="side of the synthetic slide images")
    args = parser.parse_args(argv)

    import torch
    from PIL import Image

    from thinchat.eval.caption import CaptionWriter, caption_slides, discover_slides
    from thinchat.precision import measure_precision, resolve_dtype

    torch.set_flush_denormal(True)
    if args.from_pretrained:
        from thinchat.model.loading import load_pretrained

        model, processor = load_pretrained(args.from_pretrained, device=args.device)
        model_name = args.from_pretrained
    else:
        from thinchat.testing import tiny_llava

        model, processor = tiny_llava()
        model = model.to(args.device).eval()
        model_name = "tiny_llava(llama, dinov2) random"
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "slides"
        folder.mkdir()
        for i in range(args.n_slides):
            Image.new("RGB", (args.image_size, args.image_size), (i * 13 % 256, 90, 160)).save(
                folder / f"{i:04d}.png"
            )
        slides = discover_slides([folder])
        for dtype in (resolve_dtype(name, args.device) for name in args.dtypes.split(",")):
            dtype_name = str(dtype).removeprefix("torch.")
            model = model.to(dtype)
            warm = CaptionWriter(Path(tmp) / f"warm_{dtype_name}.jsonl")
            caption_slides(model, processor, slides[:2], warm, batch_size=2, max_new_tokens=2)
            for bs in (int(b) for b in args.batch_sizes.split(",")):
                writer = CaptionWriter(Path(tmp) / f"{dtype_name}_bs{bs}.jsonl")
                start = time.perf_counter()
                summary = caption_slides(
                    model, processor, slides, writer, batch_size=bs,
                    max_new_tokens=args.max_new_tokens, min_new_tokens=args.max_new_tokens,
                )  # fmt: skip
                elapsed = time.perf_counter() - start
                results.append(
                    {
                        "dtype": dtype_name,
                        "batch_size": bs,
                        "captions": summary.written,
                        "seconds": round(elapsed, 3),
                        "captions_per_s": round(summary.written / elapsed, 3),
                        "new_tokens_per_s": round(summary.written * args.max_new_tokens / elapsed, 1),
                    }
                )
    for r in results:
        base = next((b for b in results if b["batch_size"] == 1 and b["dtype"] == r["dtype"]), None)
        if base is not None:
            r["speedup_vs_bs1"] = round(r["captions_per_s"] / base["captions_per_s"], 2)
    print(
        json.dumps(
            {
                "model": model_name,
                "device": args.device,
                "torch_threads": torch.get_num_threads(),
                "cpu": platform.processor() or platform.machine(),
                "n_slides": args.n_slides,
                "max_new_tokens": args.max_new_tokens,
                "precision": measure_precision(args.device).as_dict(),  # the host's matmul rates
                "results": results,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
