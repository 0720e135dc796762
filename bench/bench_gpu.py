"""The GPU path in one command: trainer tokens/s (LoRA, ZeRO-2, ZeRO-3, QLoRA) against a plain bf16 peft
loop, MFU against the measured matmul rate, peak memory, feature-cache precompute, engine vs raw decode.

    PYTHONPATH=. python bench/bench_gpu.py --out bench/results_gpu.json          # one GPU, ~6 min
    PYTHONPATH=. python bench/bench_gpu.py --tiny --out /tmp/gpu_tiny.json       # CPU, tiny model, seconds

No network: the models are random weights of real shapes (bench/_gpu_setup.py) and the only file read
is a tokenizer (``--tokenizer``, default ``.bench_tok/``; write it here once with ``--export-tokenizer``
from the offline preset). Each trainer run is a separate process (DeepSpeed keeps global state), started
with the env of a one-process torchrun; parts whose package is missing (deepspeed, bitsandbytes) are
skipped with the reason in ``skipped``. The JSON is rewritten after every part, so a run cut short still
leaves what it measured. MFU = tokens/s x 4N / the bf16 matmul rate (N: the LM's matmul parameters; a
frozen base needs no weight gradients; recomputation and attention are not counted).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _gpu_setup import build_model, decode, export_tokenizer, run_trainer, write_data  # noqa: E402

RESULT_TAG = "BENCH_RESULT "
#: Candidate ZeRO-3 settings, measured beside configs/zero3.json: bigger reduce / prefetch buckets
#: (``auto`` sizes them from hidden_size^2, ~0.8M elements for hidden 896: ~80 reduce calls per step)
#: and no separate communication stream (one GPU has nothing to overlap).
ZERO3_TUNED = {"reduce_bucket_size": 5e8, "stage3_prefetch_bucket_size": 5e8, "overlap_comm": False}


def versions() -> dict[str, Any]:
    out: dict[str, Any] = {
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
    }
    for name in ("torch", "transformers", "peft", "deepspeed", "bitsandbytes", "accelerate"):
        if importlib.util.find_spec(name) is None:
            out[name] = None
            continue
        try:
            out[name] = __import__(name).__version__
        except Exception as exc:  # a package that fails to import is as good as missing here
            out[name] = f"import failed: {exc}"
    import torch

    out["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor()
    return out


def trainer_runs(args, paths: dict[str, Path], results: dict, save) -> None:
    """LoRA (config default and with gradient checkpointing off), ZeRO-2, ZeRO-3 and QLoRA runs."""
    base = ["deepspeed=null"] if not args.tiny else ["deepspeed=null", "cpu=true", "bf16=false"]
    tiny_lora = ["lora_r=8", "lora_alpha=16"] if args.tiny else []
    tuned = paths["work"] / "zero3_tuned.json"
    zero3 = json.loads((ROOT / "configs" / "zero3.json").read_text())
    zero3["zero_optimization"].update(ZERO3_TUNED)
    tuned.write_text(json.dumps(zero3))
    runs = {  # most wanted first: a run cut short by the time limit loses the least
        "lora": ("configs/finetune_lora.yaml", base + tiny_lora),
        "zero2": ("configs/finetune_lora.yaml", ["deepspeed=configs/zero2.json"]),
        "zero3": ("configs/finetune_lora.yaml", ["deepspeed=configs/zero3.json"]),
        "qlora": ("configs/finetune_qlora.yaml", base + tiny_lora),
        "zero3_tuned": ("configs/finetune_lora.yaml", [f"deepspeed={tuned}"]),
        "lora_no_checkpointing": (
            "configs/finetune_lora.yaml",
            [*base, *tiny_lora, "gradient_checkpointing=false"],
        ),
        "zero3_no_checkpointing": (
            "configs/finetune_lora.yaml",
            ["deepspeed=configs/zero3.json", "gradient_checkpointing=false"],
        ),
    }
    for name, (config, overrides) in runs.items():
        if args.runs and name not in args.runs.split(","):
            continue
        needs = "deepspeed" if "zero" in name else "bitsandbytes" if name == "qlora" else None
        if needs and importlib.util.find_spec(needs) is None:
            results["skipped"][name] = f"{needs} is not installed"
            continue
        if args.tiny and "zero" in name:
            results["skipped"][name] = "--tiny runs no DeepSpeed (a GPU run measures it)"
            continue
        spec = {
            "config": str(ROOT / config),
            "model": str(paths["model"]),
            "data": str(paths["data"]),
            "out": str(paths["work"] / f"run_{name}"),
            "cache": str(paths["work"] / "feature_cache"),
            "steps": args.steps,
            "warmup": args.warmup,
            "batch": args.batch,
            "overrides": overrides,
        }
        started = time.perf_counter()
        results["train"][name] = run_trainer(spec) if args.tiny else _in_subprocess(spec, paths["log"])
        print(f"[bench] {name}: {results['train'][name]} ({time.perf_counter() - started:.0f} s)", flush=True)
        save()


def _in_subprocess(spec: dict[str, Any], log: Path) -> dict[str, Any]:
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(29500 + sum(map(ord, spec["out"])) % 1000),  # a fresh port per run
    }
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180, check=False)
    except subprocess.TimeoutExpired:
        return {"error": "timed out after 180 s"}
    with log.open("a") as fh:
        fh.write(
            f"\n===== {spec['out']} rc={proc.returncode}\n{proc.stdout[-6000:]}\n{proc.stderr[-12000:]}\n"
        )
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG) :])
    return {
        "error": f"rc {proc.returncode}: " + (proc.stderr.strip().splitlines() or ["no output"])[-1][:400]
    }


def plain_loop(args, paths: dict[str, Path], seq: int, batch: int) -> dict[str, Any]:
    """The reference: the same base in bf16, peft LoRA r128 on every LM linear layer, AdamW, sdpa,
    random token batches through the LM only (no images), no Trainer."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlavaForConditionalGeneration

    from thinchat.train.model_setup import LM_PREFIX, target_regex

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = LlavaForConditionalGeneration.from_pretrained(paths["model"], dtype=dtype).to(device)
    model.requires_grad_(False)
    r = 8 if args.tiny else 128
    lora = LoraConfig(r=r, lora_alpha=2 * r, target_modules=target_regex(model, ["all-linear"], LM_PREFIX))
    model = get_peft_model(model, lora)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    vocab = model.config.text_config.vocab_size
    ids = torch.randint(0, vocab - 1, (batch, seq), device=device)
    lm = model.base_model.model
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.warmup + args.steps):
        start = time.perf_counter()
        loss = lm(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    step = sum(times[args.warmup :]) / args.steps
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    del model, optimizer
    return {
        "tokens_per_s": batch * seq / step,
        "step_s": step,
        "batch": batch,
        "seq": seq,
        "peak_gpu_gib": peak,
    }


def precompute(paths: dict[str, Path], n_images: int) -> dict[str, Any]:
    """Feature-cache precompute on the training device in bf16 (the GPU path), into a fresh folder."""
    import torch
    from transformers import LlavaForConditionalGeneration

    from thinchat.train.feature_cache import FeatureCache
    from thinchat.train.sources import open_samples

    on_gpu = torch.cuda.is_available()
    model = LlavaForConditionalGeneration.from_pretrained(
        paths["model"], dtype=torch.bfloat16 if on_gpu else torch.float32
    )
    model.requires_grad_(False)
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(paths["model"])
    images = [p for s in open_samples(paths["data"]) for p in s.images][:n_images]
    device = "cuda" if on_gpu else "cpu"
    cache = FeatureCache(
        Path(tempfile.mkdtemp(dir=paths["work"])),
        model,
        processor,
        device=device,
        compute_dtype=torch.bfloat16,
    )
    start = time.perf_counter()
    cache.precompute(images)
    seconds = time.perf_counter() - start
    pixels = cache._pixels(images[: cache.batch_size])
    cache._tower(pixels)  # warm
    if on_gpu:
        torch.cuda.synchronize()
    start = time.perf_counter()
    cache._tower(pixels)
    if on_gpu:
        torch.cuda.synchronize()
    tower_only = len(pixels) / (time.perf_counter() - start)
    start = time.perf_counter()
    cache.features_for(images[:16])  # what a training step of 8 two-view samples reads from disk
    read_ms = 1000 * (time.perf_counter() - start)
    return {
        "images": len(set(images)),
        "images_per_s": len(set(images)) / seconds,
        "tower_only_images_per_s": tower_only,
        "batch_size": cache.batch_size,
        "read_16_images_ms": read_ms,
    }


def release() -> None:
    """Free what a finished part left on the GPU, so the next part (or trainer process) has it all."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def mean_sample_tokens(paths: dict[str, Path]) -> int:
    """Mean tokens per training sample (image tokens included): the plain loop's sequence length."""
    from transformers import AutoProcessor

    from thinchat.train.dataset import SupervisedDataset
    from thinchat.train.sources import open_samples

    processor = AutoProcessor.from_pretrained(paths["model"])
    lengths = SupervisedDataset(open_samples(paths["data"]), processor, 4096).lengths
    return round(sum(lengths) / len(lengths))


def summarise(results: dict) -> None:
    train = results["train"]
    # Against the rate of the precision the runs train in: bf16 on a GPU, fp32 on the CPU (tiny mode),
    # where bf16 can be emulated at ~1 GFLOP/s (a CPU without bf16 instructions).
    on_cpu = results.get("matmul", {}).get("device", "cpu") == "cpu"
    rate = results.get("matmul", {}).get("fp32_gflops" if on_cpu else "bf16_gflops")
    n = results["model"]["lm_matmul_params"]
    for run in train.values():
        if "tokens_per_s" in run and rate:
            run["mfu"] = run["tokens_per_s"] * 4 * n / (rate * 1e9)
    plain = train.get("plain_loop", {}).get("tokens_per_s")
    ratios = {}
    for name in ("lora", "lora_no_checkpointing", "zero2", "zero3", "qlora"):
        if plain and "tokens_per_s" in train.get(name, {}):
            ratios[f"{name}_vs_plain_loop"] = train[name]["tokens_per_s"] / plain
    if "tokens_per_s" in train.get("zero3", {}) and "tokens_per_s" in train.get("zero2", {}):
        ratios["zero3_vs_zero2"] = train["zero3"]["tokens_per_s"] / train["zero2"]["tokens_per_s"]
    results["ratios"] = ratios


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--tiny", action="store_true", help="CPU, tiny random model, seconds (the test suite)"
    )
    parser.add_argument("--out", default=str(ROOT / "bench" / "results_gpu.json"))
    parser.add_argument("--tokenizer", default=str(ROOT / ".bench_tok"), help="tokenizer dir (full mode)")
    parser.add_argument(
        "--export-tokenizer", action="store_true", help="write --tokenizer from the preset, exit"
    )
    parser.add_argument("--steps", type=int, default=None, help="timed optimizer steps per trainer run")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps before them")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--slides", type=int, default=None)
    parser.add_argument("--decode-tokens", type=int, default=None)
    parser.add_argument("--decode-repeats", type=int, default=2)
    parser.add_argument("--parts", default="matmul,precompute,train,plain,decode")
    parser.add_argument("--runs", default="", help="trainer runs to do, comma-separated (default: all)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(RESULT_TAG + json.dumps(run_trainer(json.loads(args.worker))), flush=True)
        return 0
    if args.export_tokenizer:
        print(export_tokenizer(Path(args.tokenizer)))
        return 0
    args.steps = args.steps or (3 if args.tiny else 12)
    args.warmup = args.warmup or (1 if args.tiny else 4)
    args.decode_tokens = args.decode_tokens or (8 if args.tiny else 128)
    import torch

    if not args.tiny and not torch.cuda.is_available():
        parser.error("no CUDA GPU here: use --tiny for the CPU check")
    torch.set_flush_denormal(True)
    parts = set(args.parts.split(","))
    work = Path(tempfile.mkdtemp(prefix="bench_gpu_"))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = {"work": work, "model": work / "model", "log": out.with_name(out.stem + "_log.txt")}
    paths["log"].write_text("")
    results: dict[str, Any] = {
        "mode": "tiny" if args.tiny else "full",
        "versions": versions(),
        "train": {},
        "skipped": {},
    }

    def save() -> None:
        summarise(results)
        out.write_text(json.dumps(results, indent=1, default=str))

    started = time.perf_counter()
    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    results["model"] = build_model(
        paths["model"], args.tiny, None if args.tiny else Path(args.tokenizer), device
    )
    slides = args.slides or (8 if args.tiny else 48)
    paths["data"] = write_data(work / "data", slides, 64 if args.tiny else 384, 12 if args.tiny else 110)
    results["setup_s"] = time.perf_counter() - started
    save()
    if "matmul" in parts:
        from thinchat.precision import measure_precision

        results["matmul"] = measure_precision(device).as_dict()
        save()
    if "precompute" in parts:
        results["precompute"] = precompute(paths, 2 * slides)
        release()
        save()
    if "decode" in parts:
        results["decode"], profiles = decode(args, paths)
        profile_file = out.with_name(out.stem + "_decode_profile.txt")
        profile_file.write_text("\n\n".join(f"== {k}\n{v}" for k, v in profiles.items()))
        release()
        save()
    if "plain" in parts:
        seq = mean_sample_tokens(paths)
        results["train"]["plain_loop"] = plain_loop(args, paths, seq, args.batch)
        release()
        save()
    if "train" in parts:
        trainer_runs(args, paths, results, save)
    results["total_s"] = time.perf_counter() - started
    save()
    print(json.dumps({k: results[k] for k in ("ratios", "skipped", "total_s")}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
