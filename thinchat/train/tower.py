"""Tower adaptation: LoRA on the vision tower, trained to tell the slides' phases apart, merged back.

Why: a linear read-out of the frozen DINOv2-S features is the ceiling of everything the LM learns from
them (``thinchat probe``), and on real thin sections it sits under what a user needs (the grains set:
class 0.79 at 84 px). Thin sections are far from the natural images the tower was trained on. The
field adapts the tower: LLaVA-OneVision trains it at a lower learning rate, Idefics2 found LoRA on it
stable where unfreezing diverged. Training the tower inside the LoRA stage would give up the feature
cache, the one thing that makes CPU training affordable (every step would run the tower forward and
backward). So the tower is adapted once, before stage 1, with its own cheap objective: a linear head on
the pooled tower features (the projector's input) predicts the lexicon terms each slide's description
names (for labelled slides: their classes), under random 90-degree rotations and flips, since a thin
section has no up. The LoRA weights are merged into the tower (peft ``merge_and_unload``), so the output
is a plain Llava checkpoint: every later stage, the feature cache (its key hashes the tower weights) and
plain transformers load it unchanged. Measured in docs/experiments.md ("A tower that learns thin
sections"); ``bench/studies/tower_lora.py`` is the read-out study behind the defaults.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from thinchat.config import field, from_dict, read_yaml
from thinchat.errors import ConfigError, DataFormatError
from thinchat.train.augment import dihedral

log = logging.getLogger(__name__)

#: Written beside the adapted checkpoint: the settings, the targets and the training curve.
TOWER_STATS = "tower_adaptation.json"
#: The adapted tower on its own (a plain DINOv2 / CLIP / SigLIP checkpoint with its image processor), for
#: ``thinchat build --vision`` with another LM and ``thinchat probe --vision``.
VISION_TOWER_DIR = "vision_tower"


@dataclass
class TowerConfig:
    """Tower adaptation (stage 0): LoRA on the vision tower with a term head, merged into its weights."""

    stage: str = field("tower", help="tower: this stage (the key `thinchat train` picks the stage by)")
    model: str = field("checkpoints/base", help="base Llava directory (thinchat build)")
    data: str = field(
        "data/train.json", help="training set: LLaVA conversation JSON (descriptions name the terms)"
    )
    output_dir: str = field("checkpoints/tower", help="where the Llava with the adapted tower is written")
    epochs: int = field(12, help="passes over the training slides; 0 turns the stage off")
    rank: int = field(8, help="LoRA rank on every linear layer of the tower")
    learning_rate: float = field(5e-4, help="peak LoRA learning rate (one-cycle); the head gets 10x")
    batch_size: int = field(16, help="slides per step")
    rotations: bool = field(True, help="train under random 90-degree rotations and flips (a slide has no up)")
    min_term_count: int = field(
        3, help="a term becomes a target when at least this many descriptions name it"
    )
    seed: int = field(0, help="seed of the LoRA init, the order and the rotations")

    def __post_init__(self) -> None:
        if self.stage != "tower":
            raise ConfigError(f"stage={self.stage!r}: a tower config has stage: tower")
        if self.epochs < 0 or self.rank < 1 or self.batch_size < 1 or self.learning_rate <= 0:
            raise ConfigError(
                f"tower: epochs={self.epochs}, rank={self.rank}, batch_size={self.batch_size}, "
                f"learning_rate={self.learning_rate}: need epochs >= 0, rank >= 1, batch_size >= 1, "
                "learning_rate > 0"
            )


def load_tower_config(path: str | Path | None, overrides: list[str] | None = None) -> TowerConfig:
    """The YAML at ``path`` (or the defaults) with ``key=value`` overrides."""
    try:
        return from_dict(TowerConfig, read_yaml(path, overrides))
    except ConfigError as exc:
        raise ConfigError(f"{path or 'tower config'}: {exc}") from exc


def described_slides(data: str | Path, min_count: int) -> tuple[list[list[Path]], list[str], Any]:
    """Each slide's images, the term ids named in at least ``min_count`` (and not all) of their
    descriptions (the longest answer), and the slides' 0/1 term matrix (``None`` without a slide).

    The terms are read as the closed-form projector's term units read them
    (``projector_terms.term_presence``), so the tower learns what stage 1 reads out.
    """
    from thinchat.train.projector_terms import term_presence
    from thinchat.train.run import richest_answer
    from thinchat.train.sources import open_samples

    images, answers = [], []
    for sample in open_samples(data):
        answer = richest_answer(sample.messages, sample.turn_types)
        if sample.images and answer.strip():
            images.append(list(sample.images))
            answers.append(answer)
    terms, presence = term_presence(answers, min_count=min_count) if answers else ([], None)
    return images, terms, presence


def slide_targets(data: str | Path, min_count: int) -> tuple[list[list[Path]], list[str], Any]:
    """:func:`described_slides`, refused where no term is a target (the tower would learn nothing)."""
    images, terms, presence = described_slides(data, min_count)
    if not terms:
        raise DataFormatError(
            f"{data}: no lexicon term is named in at least {min_count} (and not all) of the "
            f"{len(images)} descriptions, so the tower has nothing to learn; set epochs=0 (or leave "
            "the recipe's tower_config empty)"
        )
    return images, terms, presence


def slide_features(model: Any, pixels: Any, counts: list[int]) -> Any:
    """Per slide, the mean over its images of each image's mean projector-input token."""
    import torch

    from thinchat.train.embeds import tower_features

    per_image = tower_features(model, pixels).float().mean(dim=1)
    return torch.stack([chunk.mean(0) for chunk in per_image.split(counts)])


def adapt_tower(config: TowerConfig) -> dict[str, Any]:
    """Train, merge and save the tower (``config.output_dir``); returns the stats also written there."""
    import torch

    from thinchat.images import load_image
    from thinchat.train.embeds import vision_tower
    from thinchat.train.model_setup import load_base_dir

    torch.manual_seed(config.seed)
    model, processor = load_base_dir(config.model, dtype=torch.float32)
    images, terms, presence = slide_targets(config.data, config.min_term_count)
    pixels = [processor.image_processor([load_image(p) for p in paths], return_tensors="pt")["pixel_values"]
              for paths in images]  # fmt: skip
    log.info("tower: %d slides, %d target terms (%s)", len(pixels), len(terms), ", ".join(terms))
    started = time.perf_counter()
    device = "cuda" if torch.cuda.is_available() else "cpu"  # a GPU where there is one, else the CPU
    log.info("tower: training on the %s", device)
    model, curve = _train_lora(model.to(device), pixels, presence, config)
    model = model.merge_and_unload().to("cpu")
    stats = {
        "settings": asdict(config),
        "slides": len(pixels),
        "terms": terms,
        "loss_per_epoch": curve,
        "seconds": round(time.perf_counter() - started, 1),
    }
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    vision_tower(model).save_pretrained(out / VISION_TOWER_DIR)
    processor.image_processor.save_pretrained(out / VISION_TOWER_DIR)
    (out / TOWER_STATS).write_text(json.dumps(stats, indent=1) + "\n", encoding="utf-8")
    log.info("tower: adapted in %.0f s, loss %s -> %s; wrote %s", stats["seconds"], curve[0], curve[-1], out)
    return stats


def _train_lora(model: Any, pixels: list[Any], presence: Any, config: TowerConfig) -> tuple[Any, list[float]]:
    """LoRA on every tower linear layer plus a linear term head, trained with a multi-label loss."""
    import torch
    from peft import LoraConfig, get_peft_model
    from tqdm.auto import tqdm

    from thinchat.train.model_setup import TOWER_PREFIX, target_regex

    lora = LoraConfig(r=config.rank, lora_alpha=2 * config.rank, lora_dropout=0.1,
                      target_modules=target_regex(model, ["all-linear"], TOWER_PREFIX))  # fmt: skip
    model = get_peft_model(model, lora)
    with torch.no_grad():  # the projector's input width (several layers' width where it joins them)
        width = slide_features(model, pixels[0].to(model.device), [len(pixels[0])]).shape[-1]
    device = next(model.parameters()).device
    head = torch.nn.Linear(width, presence.shape[1]).to(device)
    presence = presence.to(device)
    lora_params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [{"params": lora_params, "lr": config.learning_rate}, {"params": head.parameters(), "lr": 10 * config.learning_rate}],
        weight_decay=0.01,
    )  # fmt: skip
    per_epoch = -(-len(pixels) // config.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=[config.learning_rate, 10 * config.learning_rate],
        total_steps=config.epochs * per_epoch,
    )
    generator = torch.Generator().manual_seed(config.seed)
    curve: list[float] = []
    model.train()
    for _ in tqdm(range(config.epochs), desc="tower", unit="epoch"):
        order = torch.randperm(len(pixels), generator=generator).tolist()
        total = 0.0
        for start in range(0, len(order), config.batch_size):
            batch = order[start : start + config.batch_size]
            k = int(torch.randint(8, (1,), generator=generator)) if config.rotations else 0
            counts = [len(pixels[i]) for i in batch]
            x = dihedral(torch.cat([pixels[i] for i in batch]).to(device), k)
            logits = head(slide_features(model, x, counts))
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, presence[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += float(loss.detach()) * len(batch)
        curve.append(round(total / len(pixels), 4))
    model.eval()
    return model, curve
