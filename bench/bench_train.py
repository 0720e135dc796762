"""LM training tokens/s, MFU and peak memory for LoRA on the offline default, with and without the feature cache.

Runs the real model (``thinchat build --vision dinov2-small --llm smollm2-135m-instruct --image-size 112``,
built once into thinchat's cache) with peft LoRA r16 / alpha 32 / dropout 0.05 on every LM linear layer,
the projector trainable (peft ``modules_to_save``), the tower frozen, AdamW. Three configurations, each in
its own process so peak RSS is per configuration:

  a  naive: fp32, denormals not flushed, images decoded and run through the tower every step
  b  bf16 autocast + ``torch.set_flush_denormal(True)``, still through the tower every step
  c  b + the feature cache: epoch 1 fills it (the tower runs), epoch 2 reads it (the tower does not)
  d  fp32 + flush denormals + the feature cache (on CPUs whose bf16 matmul is not faster than fp32)
  e  c with the frozen base stored in bf16 (the trainable LoRA and projector stay fp32 for AdamW)
  f  e + ``torch.compile`` (inductor) of the model's forward; its compile time is in ``warm_up_s``
  g  e with the LM head only where a label is (``logits_only_where_scored``)
  h  g with head and loss in vocabulary chunks (``thinchat.train.trainer.lm_loss``, what stage 2 runs)

Every sample is ``--seq-len`` tokens (64 image tokens + text); images are synthetic thin sections from
``data_tools.synth`` at ``--image-px``. MFU = achieved model FLOP/s / the matmul FLOP/s measured here in the
same precision, with ~4N FLOP per LM token for LoRA on a frozen base (6N for the small trainable
projector) plus 2N per tower token where the tower runs.

    python bench/bench_train.py [--steps 4] [--batch-size 8] [--seq-len 128] [--out bench_train.json]
    python bench/bench_train.py --configs d --profile 2     # where a step's time goes (bench/_profile.py)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _profile import profile_steps
from _util import default_model_dir, emit_report, machine, matmul_flops, peak_rss_mib

CONFIGS = {
    "a": "fp32, pixels through the tower every step (naive)",
    "b": "bf16 autocast + flush denormals, pixels through the tower",
    "c": "bf16 autocast + flush denormals + feature cache",
    "d": "fp32 + flush denormals + feature cache (for CPUs where bf16 matmul is not faster)",
    "e": "c with the frozen base stored in bf16 (trainable LoRA + projector kept fp32)",
    "f": "e + torch.compile (inductor) of the model's forward",
    "g": "e with the LM head only where a label is",
    "h": "g with the head and its loss in vocabulary chunks (linear cross-entropy: the trainer's loss)",
}
BF16_CONFIGS = ("b", "c", "e", "f", "g", "h")
CACHED_CONFIGS = ("c", "d", "e", "f", "g", "h")
CAPTION = (
    "Quartz grains are subrounded with undulose extinction; plagioclase shows polysynthetic twinning. "
    "泥质呈纤维状、隐晶状，大部分已绢云母化，分布欠均。方解石呈粉晶-细晶状，含铁。少见锆石、电气石等。"
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=None, help="a Llava dir (default: build the offline default once)")
    parser.add_argument(
        "--steps", type=int, default=4, help="timed optimizer steps per configuration / epoch"
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128, help="tokens per sample, image tokens included")
    parser.add_argument("--image-px", type=int, default=224, help="side of the synthetic slide PNGs")
    parser.add_argument("--configs", default="a,b,c,d", help="which of " + ",".join(CONFIGS) + " to run")
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--threads", type=int, default=0, help="torch threads per run (0: torch's default)")
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        help="also profile N more steps per configuration (torch.profiler): seconds per part of a step "
        "(matmul, attention, softmax + cross-entropy, AdamW, casts, elementwise), matmul rate vs the peak",
    )
    parser.add_argument("--out", default=None, help="also write the JSON here")
    parser.add_argument("--peak", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--data", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------------------------- child
def load_lora_model(model_dir: str, lora_r: int, base_dtype: str = "float32"):
    import torch
    from peft import LoraConfig, get_peft_model

    from thinchat.model.loading import load_pretrained

    # thinchat's loader: a pixel-shuffled checkpoint (the quickstart's) is not a plain transformers Llava
    model, processor = load_pretrained(model_dir, dtype=getattr(torch, base_dtype), clipcap=False)
    model.model.vision_tower.requires_grad_(False)
    targets = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
    config = LoraConfig(
        r=lora_r,
        lora_alpha=2 * lora_r,
        lora_dropout=0.05,
        target_modules=targets,
        modules_to_save=["multi_modal_projector"],
    )
    peft_model = get_peft_model(model, config).train()
    for param in peft_model.parameters():  # AdamW updates stay fp32 whatever the frozen base is stored in
        if param.requires_grad:
            param.data = param.data.float()
    return peft_model, model, processor


def flop_counts(llava) -> dict[str, int]:
    """Matmul parameter counts: LM (lm_head included, embedding lookup excluded), projector, tower."""
    lm = llava.model.language_model
    embed = lm.get_input_embeddings().weight.numel()
    return {
        "lm": sum(p.numel() for p in lm.parameters()) - embed + llava.lm_head.weight.numel(),
        "projector": sum(p.numel() for p in llava.model.multi_modal_projector.parameters()),
        "tower": sum(p.numel() for p in llava.model.vision_tower.parameters()),
    }


def make_batches(processor, paths: list[Path], batch_size: int, seq_len: int, n_image_tokens: int):
    import torch

    tok = processor.tokenizer
    image_id = tok.convert_tokens_to_ids(processor.image_token)
    n_text = seq_len - n_image_tokens
    if n_text < 2:
        raise SystemExit(f"--seq-len {seq_len} leaves no room for text after {n_image_tokens} image tokens")
    text = tok(CAPTION * (1 + n_text // 20), add_special_tokens=False)["input_ids"][:n_text]
    ids = torch.tensor([image_id] * n_image_tokens + text).repeat(batch_size, 1)
    labels = ids.clone()
    labels[:, :n_image_tokens] = -100
    return [(ids, labels, paths[i : i + batch_size]) for i in range(0, len(paths), batch_size)]


def lm_step_loss(mode: str, forward, inputs: dict):
    """The step's loss as config ``mode`` computes it: the head on every position, on the labelled
    positions, or fused with the loss in vocabulary chunks."""
    from thinchat.train.trainer import lm_loss, logits_only_where_scored

    if mode == "h":
        return lm_loss(forward, inputs)
    if mode == "g":
        return forward(**logits_only_where_scored(inputs)).loss
    return forward(**inputs).loss


def run_child(args: argparse.Namespace) -> dict:
    import torch

    from thinchat.images import load_image
    from thinchat.train.embeds import merge_image_features, tower_features
    from thinchat.train.feature_cache import FeatureCache

    mode = args.child
    if args.threads:
        torch.set_num_threads(args.threads)
    bf16 = mode in BF16_CONFIGS
    torch.set_flush_denormal(mode != "a")
    torch.manual_seed(0)
    base_dtype = "bfloat16" if mode in ("e", "f", "g", "h") else "float32"
    peft_model, llava, processor = load_lora_model(args.model, args.lora_r, base_dtype)
    forward = torch.compile(peft_model) if mode == "f" else peft_model
    n_img = llava.config.image_seq_length
    paths = sorted(Path(args.data).glob("*.png"))
    warm_paths, data_paths = paths[: args.batch_size], paths[args.batch_size :]
    warm = make_batches(processor, warm_paths, args.batch_size, args.seq_len, n_img)
    batches = make_batches(processor, data_paths, args.batch_size, args.seq_len, n_img)
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-4)
    cache_dir = tempfile.mkdtemp(prefix="thinchat-bench-cache-")
    cache = FeatureCache(cache_dir, peft_model, processor) if mode in CACHED_CONFIGS else None

    def pixels(batch_paths):
        images = [load_image(p) for p in batch_paths]
        return processor.image_processor(images, return_tensors="pt")["pixel_values"]

    def step(batch) -> float:
        ids, labels, batch_paths = batch
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            if cache is None:
                loss = forward(input_ids=ids, pixel_values=pixels(batch_paths), labels=labels).loss
            else:
                embeds = merge_image_features(peft_model, ids, cache.features_for(batch_paths))
                loss = lm_step_loss(mode, forward, {"inputs_embeds": embeds, "labels": labels})
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if not torch.isfinite(loss):
            raise SystemExit(f"config {mode}: loss is {loss.item()}")
        return time.perf_counter() - start

    warm_started = time.perf_counter()
    for batch in warm:
        step(batch)
    warm_s = time.perf_counter() - warm_started
    tokens = args.batch_size * args.seq_len
    epochs = 2 if cache is not None else 1
    result: dict = {"config": mode, "what": CONFIGS[mode], "warm_up_s": round(warm_s, 1), "epochs": []}
    for epoch in range(epochs):
        times = [step(batch) for batch in batches]
        result["epochs"].append(
            {
                "epoch": epoch + 1,
                "steps": len(times),
                "seconds": round(sum(times), 3),
                "tokens_per_s": round(tokens * len(times) / sum(times), 1),
            }
        )
    if args.profile:
        result["profile"] = profile_steps(step, (batches * args.profile)[: args.profile], args.peak)
    # Where the time goes outside the LM: image decode + preprocessing, and the tower, per batch.
    start = time.perf_counter()
    pixel_values = pixels(batches[0][2])
    decode_s = time.perf_counter() - start
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16 and cache is None):
        start = time.perf_counter()
        tower_features(llava, pixel_values)
        tower_s = time.perf_counter() - start
    result["per_batch_s"] = {"decode_preprocess": round(decode_s, 3), "tower_forward": round(tower_s, 3)}
    result["params"] = flop_counts(llava)
    result["image_tokens_per_sample"] = n_img
    if cache is not None:
        result["cache"] = {
            **cache.stats.as_dict(),
            "disk_bytes": cache.disk_bytes(),
            "bytes_per_image": cache.disk_bytes() // max(1, cache.stats.misses),
            "dtype": cache.dtype_name,
        }
    result["peak_rss_mib"] = round(peak_rss_mib(), 1)
    return result


# --------------------------------------------------------------------------------------------- parent
def write_slides(folder: Path, n: int, px: int) -> None:
    from PIL import Image

    from data_tools.synth import make_slide

    for i in range(n):
        ppl = make_slide(seed=0, index=i, size=px)[0]
        (ppl if isinstance(ppl, Image.Image) else Image.fromarray(ppl)).save(folder / f"{i:04d}.png")


def model_flop_per_step(child: dict, args: argparse.Namespace, tower_runs: bool) -> float:
    params, n_img = child["params"], child["image_tokens_per_sample"]
    tokens = args.batch_size * args.seq_len
    flop = 4 * params["lm"] * tokens + 6 * params["projector"] * n_img * args.batch_size
    if tower_runs:
        flop += 2 * params["tower"] * (n_img + 1) * args.batch_size
    return flop


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(run_child(args)))
        return 0
    model_dir = (
        Path(args.model) if args.model else default_model_dir("dinov2-small", "smollm2-135m-instruct", 112)
    )
    peak = {"bfloat16": matmul_flops("bfloat16"), "float32": matmul_flops("float32")}
    report: dict = {
        "bench": "train",
        "machine": machine(),
        "load_average_at_start": os.getloadavg(),
        "model": str(model_dir),
        "lora": {"r": args.lora_r, "alpha": 2 * args.lora_r, "targets": "all LM linear layers"},
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "steps": args.steps,
        "image_px": args.image_px,
        "matmul_gflops": {k: round(v / 1e9, 1) for k, v in peak.items()},
        "configs": {},
    }
    with tempfile.TemporaryDirectory(prefix="thinchat-bench-") as tmp:
        write_slides(Path(tmp), args.batch_size * (args.steps + 1), args.image_px)
        for mode in args.configs.split(","):
            rate = peak["bfloat16" if mode in BF16_CONFIGS else "float32"]
            command = [
                sys.executable,
                __file__,
                "--child",
                mode,
                "--model",
                str(model_dir),
                "--data",
                tmp,
                "--steps",
                str(args.steps),
                "--batch-size",
                str(args.batch_size),
                "--seq-len",
                str(args.seq_len),
                "--lora-r",
                str(args.lora_r),
                "--threads",
                str(args.threads),
                "--profile",
                str(args.profile),
                "--peak",
                str(rate),
            ]
            print(f"running config {mode}: {CONFIGS[mode]}", file=sys.stderr, flush=True)
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode:
                sys.stderr.write(done.stderr[-4000:])
                raise SystemExit(f"config {mode} failed (exit {done.returncode})")
            child = json.loads(done.stdout.strip().splitlines()[-1])
            for epoch in child["epochs"]:
                tower_runs = mode in ("a", "b") or epoch["epoch"] == 1
                flop = model_flop_per_step(child, args, tower_runs) * epoch["steps"]
                epoch["model_tflop"] = round(flop / 1e12, 3)
                epoch["mfu"] = round(flop / epoch["seconds"] / rate, 3)
            report["configs"][mode] = child
    configs = report["configs"]
    summary: dict = {}
    if "a" in configs:
        summary["naive_tokens_per_s"] = configs["a"]["epochs"][0]["tokens_per_s"]
    if "b" in configs:
        summary["bf16_tokens_per_s"] = configs["b"]["epochs"][0]["tokens_per_s"]
    if "c" in configs:
        first, second = (e["tokens_per_s"] for e in configs["c"]["epochs"])
        summary["cached_tokens_per_s"] = second
        summary["second_vs_first_epoch_speedup"] = round(second / first, 2)
        if "a" in configs:
            summary["cached_vs_naive_speedup"] = round(second / summary["naive_tokens_per_s"], 2)
        lm_only = 4 * configs["c"]["params"]["lm"]
        summary["lora_ceiling_tokens_per_s"] = round(peak["bfloat16"] / lm_only, 1)
        summary["target_250_tokens_per_s_met"] = second >= 250
        summary["target_3x_second_epoch_met"] = second / first >= 3
    if "d" in configs:
        first, second = (e["tokens_per_s"] for e in configs["d"]["epochs"])
        summary["fp32_cached_tokens_per_s"] = second
        summary["fp32_cached_second_vs_first_epoch_speedup"] = round(second / first, 2)
    for mode in ("e", "f"):
        if mode in configs:
            summary[f"{mode}_cached_tokens_per_s"] = configs[mode]["epochs"][-1]["tokens_per_s"]
    summary["best_tokens_per_s"] = max(e["tokens_per_s"] for c in configs.values() for e in c["epochs"])
    report["load_average_at_end"] = os.getloadavg()  # other jobs on a shared 2-core box skew every number
    report["summary"] = summary
    emit_report(report, args.out, indent=1, ensure_ascii=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
