"""``bench_gpu.py``'s parts: models of real shapes with random weights, a synthetic data set, the
trainer worker and its step timer, and the decode comparison (ChatEngine vs model.generate).

Why random weights of real shapes: the GPU machine has no network and no preset weights, and speed does
not depend on the values. The LM has Qwen2.5-0.5B's shape (hidden 896, 24 layers, 14 heads, 2 KV heads,
intermediate 4864, tied embeddings) with SmolLM2's 49k vocabulary (402M parameters), the tower CLIP
ViT-L/14-336's (304M, 576 image tokens per view). ``--tiny`` uses ``thinchat.testing.tiny_llava`` on CPU.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

TOKENIZER_PRESET = "smollm2-135m-instruct"
PROMPT = "Describe this thin section."
WORDS = [
    "quartz",
    "feldspar",
    "plagioclase",
    "calcite",
    "dolomite",
    "sericite",
    "chlorite",
    "muscovite",
    "biotite",
    "zircon",
    "tourmaline",
    "grains",
    "subrounded",
    "subangular",
    "matrix",
    "cement",
    "argillaceous",
    "siliceous",
    "undulose",
    "extinction",
    "twinning",
    "alteration",
    "pores",
    "fine",
    "medium",
    "coarse",
    "sorted",
    "oriented",
    "elongate",
    "replaced",
    "rimmed",
]


def export_tokenizer(out: Path) -> Path:
    """Save the offline preset's tokenizer (no weights) into ``out``: the only file the GPU run needs."""
    from transformers import AutoTokenizer

    from thinchat.model.presets import materialize

    tokenizer = AutoTokenizer.from_pretrained(materialize(TOKENIZER_PRESET))
    tokenizer.save_pretrained(out)
    return out


def _clip_processor(size: int):
    """CLIP's image processor: the torchvision-backed one where torchvision exists, else the PIL one."""
    import importlib.util

    import transformers

    name = "CLIPImageProcessor" if importlib.util.find_spec("torchvision") else "CLIPImageProcessorPil"
    cls = getattr(transformers, name)
    return cls(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def build_model(out: Path, tiny: bool, tokenizer_dir: Path | None, device: str) -> dict[str, Any]:
    """Write a Llava directory to ``out`` (random weights) and return its shape summary."""
    import torch

    from thinchat.model.compose import compose_llava

    torch.manual_seed(0)
    if tiny:
        from thinchat.testing import tiny_llava

        model, processor = tiny_llava("llama", "clip", image_size=28)
    else:
        from transformers import (
            AutoTokenizer,
            CLIPVisionConfig,
            CLIPVisionModel,
            Qwen2Config,
            Qwen2ForCausalLM,
        )

        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        lm_config = Qwen2Config(
            vocab_size=len(tokenizer) + 1,
            hidden_size=896,
            intermediate_size=4864,
            num_hidden_layers=24,
            num_attention_heads=14,
            num_key_value_heads=2,
            max_position_embeddings=32768,
            rope_theta=1e6,
            rms_norm_eps=1e-6,
            tie_word_embeddings=True,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        tower_config = CLIPVisionConfig(
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=24,
            num_attention_heads=16,
            image_size=336,
            patch_size=14,
            projection_dim=768,
            hidden_act="quick_gelu",
        )
        with torch.device(device):  # random init on the GPU: seconds instead of a minute on the CPU
            lm = Qwen2ForCausalLM(lm_config)
            tower = CLIPVisionModel(tower_config)
            model, processor, _ = compose_llava(tower, _clip_processor(336), lm, tokenizer)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    lm_params = sum(p.numel() for p in model.model.language_model.parameters())
    head = model.lm_head.weight
    tied = head.data_ptr() == model.model.language_model.embed_tokens.weight.data_ptr()
    summary = {
        "lm_params": lm_params + (0 if tied else head.numel()),
        "lm_matmul_params": lm_params - model.model.language_model.embed_tokens.weight.numel() + head.numel(),
        "tower_params": sum(p.numel() for p in model.model.vision_tower.parameters()),
        "image_tokens": int(model.config.image_seq_length),
        "hidden_size": int(model.config.text_config.hidden_size),
        "vocab_size": int(model.config.text_config.vocab_size),
    }
    del model
    return summary


def write_data(root: Path, n: int, image_px: int, caption_words: int, seed: int = 0) -> Path:
    """``n`` slides (PPL + XPL views, noisy colour fields) with a caption each, as LLaVA JSON."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    entries = []
    for i in range(n):
        paths = []
        for view in ("ppl", "xpl"):
            base = rng.integers(40, 220, 3)
            pixels = np.clip(base + rng.normal(0, 25, (image_px, image_px, 3)), 0, 255).astype(np.uint8)
            rel = f"images/{i:04d}_{view}.png"
            Image.fromarray(pixels).save(root / rel)
            paths.append(rel)
        caption = " ".join(rng.choice(WORDS, caption_words)) + "."
        entries.append(
            {
                "id": f"s{i:04d}",
                "image": paths,
                "conversations": [
                    {"from": "human", "value": "<image>\n<image>\nDescribe this thin section."},
                    {"from": "gpt", "value": caption},
                ],
            }
        )
    path = root / "train.json"
    path.write_text(json.dumps(entries), encoding="utf-8")
    return path


def make_step_timer(warmup: int):
    """A Trainer callback timing the steps after ``warmup`` (tokens, seconds, peak GPU memory)."""
    import torch
    from transformers import TrainerCallback

    def sync() -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.start: tuple[float, int, int] | None = None
            self.end: tuple[float, int, int] | None = None

        def on_train_begin(self, args, state, control, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == warmup or state.global_step == state.max_steps:
                sync()
                mark = (time.perf_counter(), state.num_input_tokens_seen, state.global_step)
                if state.global_step == warmup:
                    self.start = mark
                else:
                    self.end = mark

        def result(self) -> dict[str, Any]:
            if self.start is None or self.end is None:
                return {"error": "fewer steps than the warm-up"}
            seconds = self.end[0] - self.start[0]
            tokens = self.end[1] - self.start[1]
            steps = self.end[2] - self.start[2]
            peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
            return {
                "tokens_per_s": tokens / seconds,
                "step_s": seconds / steps,
                "tokens_per_step": tokens / steps,
                "timed_steps": steps,
                "peak_gpu_gib": peak,
            }

    return StepTimer()


def run_trainer(spec: dict[str, Any]) -> dict[str, Any]:
    """One ``thinchat train`` run (in this process) from ``spec``; returns the step timer's figures."""
    from thinchat.train.config import load_train_config
    from thinchat.train.run import train

    steps, warmup = spec["steps"], spec["warmup"]
    overrides = [
        f"model={spec['model']}",
        f"data={spec['data']}",
        f"output_dir={spec['out']}",
        "val_data=null",
        f"max_steps={steps}",
        f"save_steps={steps * 10}",
        "report_to=none",
        f"logging_steps={steps * 10}",
        f"per_device_train_batch_size={spec['batch']}",
        "gradient_accumulation_steps=1",
        f"feature_cache_dir={spec['cache']}",
        *spec.get("overrides", []),
    ]
    timer = make_step_timer(warmup)
    start = time.perf_counter()
    train(load_train_config(spec["config"], overrides), callbacks=[timer])
    return {**timer.result(), "wall_s": time.perf_counter() - start, "overrides": spec.get("overrides", [])}


def decode(args, paths: dict[str, Path]) -> tuple[dict[str, Any], dict[str, str]]:
    """ms per decoded token: ChatEngine.describe / stream vs model.generate with the same arguments."""
    import numpy as np
    import torch
    from PIL import Image

    from thinchat.engine import ChatEngine

    on_gpu = torch.cuda.is_available()
    probe = ChatEngine.from_pretrained(paths["model"])  # no device / dtype: what the front ends get
    default = {"device": str(probe.model.device), "dtype": str(probe.model.dtype)}
    del probe
    engine = ChatEngine.from_pretrained(
        paths["model"], device="cuda" if on_gpu else "cpu", dtype="bf16" if on_gpu else "fp32"
    )
    model, processor = engine.model, engine.processor
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (336, 336, 3), dtype=np.uint8))
    new = args.decode_tokens
    forwards = [0]
    model.register_forward_pre_hook(lambda *_: forwards.__setitem__(0, forwards[0] + 1))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=[image], text=text, return_tensors="pt").to(model.device)
    inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    same = {"max_new_tokens": new, "do_sample": False, "repetition_penalty": engine.settings.repetition_penalty,
            "eos_token_id": engine.stop_token_ids, "pad_token_id": processor.tokenizer.pad_token_id}  # fmt: skip
    cases = {
        "raw_generate": lambda: model.generate(**inputs, **same),
        "raw_generate_no_penalty": lambda: model.generate(**inputs, **{**same, "repetition_penalty": None}),
        "engine_describe": lambda: engine.describe([image], PROMPT, max_new_tokens=new),
        "engine_describe_no_prefix_reuse": lambda: _without_reuse(engine, image, new),
        "engine_stream": lambda: "".join(engine.stream_messages(messages, [image], max_new_tokens=new)),
    }
    out: dict[str, Any] = {"max_new_tokens": new, "engine_default": default}
    for name, fn in cases.items():
        fn()  # warm-up: kernels, allocator, the engine's feature cache and KV prefix
        best = None
        for _ in range(args.decode_repeats):
            forwards[0] = 0
            if on_gpu:
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if on_gpu:
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            best = min(best or seconds, seconds)
        out[name] = {"s": best, "forwards": forwards[0], "ms_per_token": 1000 * best / max(forwards[0], 1)}
    out["engine_vs_raw"] = out["engine_describe"]["ms_per_token"] / out["raw_generate"]["ms_per_token"]
    profiles = {}
    activities = [torch.profiler.ProfilerActivity.CPU] + (
        [torch.profiler.ProfilerActivity.CUDA] if on_gpu else []
    )
    for name in ("raw_generate", "engine_describe"):
        with torch.profiler.profile(activities=activities) as prof:
            cases[name]()
        profiles[name] = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
    return out, profiles


def _without_reuse(engine, image, new: int) -> str:
    engine.reuse_prefix = False
    try:
        return engine.describe([image], PROMPT, max_new_tokens=new)
    finally:
        engine.reuse_prefix = True
