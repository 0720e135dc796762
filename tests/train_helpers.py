"""Tiny datasets and base checkpoints for the training tests (random images, short captions)."""

from __future__ import annotations

import json
from pathlib import Path

MINERALS = [("quartz", "石英"), ("calcite", "方解石"), ("zircon", "锆石"), ("biotite", "黑云母")]
COLORS = [(220, 220, 210), (240, 200, 120), (90, 60, 160), (60, 130, 70)]


def write_dataset(
    root: Path,
    n: int = 8,
    two_images: bool = False,
    text_only: int = 0,
    name: str = "train.json",
    seed: int = 0,
) -> Path:
    """``n`` entries: a plain-colour slide per mineral with a caption naming it (learnable), plus text-only ones."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    entries = []
    for i in range(n):
        k = i % len(MINERALS)
        paths = []
        for view in ("ppl", "xpl") if two_images else ("ppl",):
            pixels = np.clip(np.array(COLORS[k]) + rng.integers(-20, 20, (32, 32, 3)), 0, 255).astype(
                np.uint8
            )
            rel = f"images/{name[:-5]}_{i:03d}_{view}.png"
            Image.fromarray(pixels).save(root / rel)
            paths.append(rel)
        prompt = "<image>\n" * len(paths) + "Describe this thin section."
        answer = f"Mainly {MINERALS[k][0]}. 主要为{MINERALS[k][1]}。"
        entries.append(
            {
                "id": f"s{i:03d}",
                "image": paths if two_images else paths[0],
                "conversations": [{"from": "human", "value": prompt}, {"from": "gpt", "value": answer}],
            }
        )
    for j in range(text_only):
        entries.append(
            {
                "id": f"t{j:03d}",
                "conversations": [
                    {"from": "human", "value": "What is undulose extinction?"},
                    {"from": "gpt", "value": "Quartz grains with wavy extinction."},
                ],
            }
        )
    path = root / name
    path.write_text(json.dumps(entries, ensure_ascii=False, indent=1), encoding="utf-8")
    return path


def save_tiny(path: Path, lm: str = "llama", tower: str = "dinov2", seed: int = 0) -> Path:
    from thinchat.testing import tiny_llava

    model, processor = tiny_llava(lm, tower, image_size=28, seed=seed)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def tiny_overrides(stage: str, base: Path, data: Path, out: Path, **extra) -> list[str]:
    """Overrides that make a ``stage`` config fast on a tiny model."""
    values = {
        "stage": stage,
        "model": base,
        "data": data,
        "output_dir": out,
        "per_device_train_batch_size": 4,
        "gradient_accumulation_steps": 1,
        "max_steps": 6,
        "save_steps": 3,
        "logging_steps": 1,
        "report_to": "none",
        "bf16": False,
        "cpu": True,
        "group_by_length": True,
        "feature_cache": False,
    }
    if stage in ("lora", "qlora"):
        values.update({"lora_r": 8, "lora_alpha": 16})
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


def typed_slide_entry(types: tuple[str, ...] = ("presence", "describe", "which")) -> dict:
    """One converted slide (``a.png`` + ``b.png``) with ``turn_types``: a "no" presence turn, the
    description and a which-of turn, cut to ``len(types)`` exchanges."""
    return {
        "id": "s1",
        "image": ["a.png", "b.png"],
        "turn_types": list(types),
        "conversations": [
            {"from": "human", "value": "<image>\n<image>\nIs calcite present?"},
            {"from": "gpt", "value": "No, there is no calcite in this slide."},
            {"from": "human", "value": "Describe the slide."},
            {"from": "gpt", "value": "Quartz (about 60%) and K-feldspar."},
            {"from": "human", "value": "Which does it contain: quartz or dolomite?"},
            {"from": "gpt", "value": "Quartz."},
        ][: 2 * len(types)],
    }


def write_typed_slide(root: Path, extra: tuple[dict, ...] = ()) -> Path:
    """``typed_slide_entry()`` and ``extra`` entries as ``root/train.json``, with the slide's two images."""
    from thinchat.testing import tiny_image

    for name in ("a.png", "b.png"):
        tiny_image().save(root / name)
    path = root / "train.json"
    path.write_text(json.dumps([typed_slide_entry(), *extra]), encoding="utf-8")
    return path
