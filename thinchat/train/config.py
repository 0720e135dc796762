"""Typed training configs: one dataclass per stage, loaded from ``configs/*.yaml`` plus ``key=value`` overrides.

Why one class per stage: each stage has its own known-good defaults (LLaVA-1.5: projector 1e-3, LoRA r 128 /
alpha 256 / 2e-4, full 2e-5; warmup 3 %, cosine) and its own keys; a LoRA key in a full fine-tuning config is
a mistake the user should hear about before any model is loaded. ``stage`` in the YAML picks the class.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from thinchat.config import field, from_dict, read_yaml
from thinchat.errors import ConfigError

Stage = Literal["projector", "lora", "qlora", "full", "clipcap"]


def _check_range(name: str, value: float, low: float, high: float, hint: str = "") -> None:
    if not (low <= value <= high):
        raise ConfigError(f"{name}={value!r} is out of range [{low}, {high}]{'; ' + hint if hint else ''}")


@dataclass
class TrainConfig:
    """Keys shared by every stage."""

    stage: Stage = field("lora", help="projector (stage 1), lora / qlora (stage 2) or full")
    model: str = field("checkpoints/base", help="base Llava directory (thinchat build, or a stage-1 output)")
    data: str = field("data/train.json", help="training set: LLaVA conversation JSON")
    val_data: str | None = field(None, help="validation JSON for the evaluation loss (optional)")
    text_data: str | None = field(
        None, help="extra text-only instruction JSON mixed into training (optional)"
    )
    text_only_ratio: float | None = field(
        None, help="fraction of each epoch drawn from text-only entries (None: use every entry once)"
    )
    output_dir: str = field("checkpoints/run", help="where checkpoints and the final model are written")
    max_length: int = field(2048, help="token limit per sample (capped at the LM's positions)")
    too_long: Literal["truncate", "skip"] = field(
        "truncate", help="samples over max_length: cut text after the last image, or skip them (counted)"
    )
    max_images: int = field(4, help="most images per sample (PPL + XPL = 2)")
    max_turns: int | None = field(
        None, help="keep the first N question/answer exchanges of each conversation (1: captions for stage 1)"
    )
    turn_layout: Literal["conversation", "split_description", "per_exchange", "isolated"] = field(
        "conversation",
        help="how a slide's exchanges are trained: conversation (one sample, as converted), "
        "split_description (the description and the questions as two samples), per_exchange (one sample "
        "per exchange, each seeing only the images and its own question) or isolated (per_exchange's "
        "attention in one sample: the images once, an exchange mask; sdpa/eager attention). "
        "All but conversation need the converter's turn_types",
    )
    verdict_loss_weight: float = field(
        1.0,
        help="loss weight of the first answer token of each yes/no (presence) turn, the verdict, against 1 "
        "for every other answer token; > 1 trains the verdict harder (needs the converter's turn_types; "
        "docs/experiments.md, Is the verdict in the first token?)",
    )
    num_train_epochs: float = field(1.0, help="passes over the training set")
    max_steps: int = field(-1, help="stop after this many optimizer steps (-1: use num_train_epochs)")
    time_budget_s: float = field(
        0.0,
        help="seconds of training: after budget_calibration_steps the run times its own steps and sets "
        "its step count to fit (a multiple of 32, max_steps the cap), with the LR schedule fitted to it; "
        "0: max_steps as configured (thinchat/train/time_budget.py)",
    )
    budget_calibration_steps: int = field(16, help="steps timed before time_budget_s sets the step count")
    per_device_train_batch_size: int = field(4, help="samples per device per forward pass")
    per_device_eval_batch_size: int = field(4, help="samples per device per evaluation pass")
    gradient_accumulation_steps: int = field(4, help="forward passes per optimizer step")
    learning_rate: float = field(2e-4, help="peak learning rate of the trained weights")
    projector_lr: float | None = field(None, help="learning rate of the projector (None: learning_rate)")
    weight_decay: float = field(0.0, help="AdamW weight decay (not applied to biases and norms)")
    warmup_ratio: float = field(0.03, help="fraction of steps with linear warm-up")
    lr_scheduler_type: str = field("cosine", help="transformers scheduler name")
    max_grad_norm: float = field(1.0, help="gradient clipping norm")
    bf16: bool | Literal["auto"] = field(
        True,
        help="bf16 autocast (CPU with fast bf16 matmuls, or Ampere+ GPUs); auto: measure bf16 vs fp32 "
        "matmuls at start-up and take the faster on CPU, bf16 on GPUs that support it (thinchat.precision)",
    )
    fp16: bool = field(False, help="fp16 mixed precision (older GPUs)")
    gradient_checkpointing: bool = field(False, help="recompute activations to save memory")
    group_by_length: bool = field(True, help="batch samples of similar length (less padding)")
    feature_cache: bool = field(False, help="cache frozen vision-tower features on disk and reuse them")
    feature_cache_dtype: Literal["bfloat16", "float32"] = field(
        "bfloat16", help="stored feature dtype (bf16 loses nothing under bf16 autocast; float32 is exact)"
    )
    feature_cache_dir: str | None = field(
        None, help="feature cache folder (default: <data dir>/.feature_cache)"
    )
    rotations: bool = field(
        False,
        help="train on random 90-degree rotations and flips of each slide's images (a thin section has no "
        "up): one of the 8 per slide and step, drawn from seed and step, all its views turned alike; the "
        "feature cache holds all 8 of each training image (8x its one-off precompute), and the closed-form "
        "projector fit gets 8 rows per slide (thinchat.train.augment)",
    )
    save_steps: int = field(200, help="write a checkpoint every N optimizer steps")
    save_total_limit: int = field(
        2, help="complete checkpoints to keep (the newest complete one is never deleted)"
    )
    eval_steps: int | None = field(None, help="evaluate every N steps (None: save_steps); needs val_data")
    logging_steps: int = field(10, help="log loss / tokens/s every N steps")
    report_to: list[str] = field(["tensorboard"], help="loggers: tensorboard, none, wandb...")
    seed: int = field(42, help="seed for initialisation, data order and dropout")
    dataloader_num_workers: int = field(0, help="data loading worker processes")
    deepspeed: str | None = field(
        None, help="DeepSpeed JSON (configs/zero2.json, zero3.json, zero3_offload.json)"
    )
    cpu: bool = field(False, help="train on CPU even when a GPU is present")
    torch_compile: bool = field(
        False,
        help="compile the model with torch.compile (inductor: fuses the elementwise work around the "
        "matmuls); pays off on long runs: 1.43x faster LoRA steps on a 2-core AMX Xeon after 261 s of "
        "compiling (docs/performance.md); on a CPU without a C++ compiler training goes on uncompiled "
        "and says so",
    )
    num_threads: int | None = field(None, help="CPU threads for torch (None: torch's default)")

    def validate(self) -> None:
        _check_range("learning_rate", self.learning_rate, 1e-8, 1.0, "typical values are 2e-5 .. 1e-3")
        if self.projector_lr is not None:
            _check_range("projector_lr", self.projector_lr, 1e-8, 1.0, "typical value 1e-3")
        _check_range("per_device_train_batch_size", self.per_device_train_batch_size, 1, 4096)
        _check_range("per_device_eval_batch_size", self.per_device_eval_batch_size, 1, 4096)
        _check_range("gradient_accumulation_steps", self.gradient_accumulation_steps, 1, 100000)
        _check_range("warmup_ratio", self.warmup_ratio, 0.0, 1.0)
        _check_range("weight_decay", self.weight_decay, 0.0, 1.0)
        _check_range("max_length", self.max_length, 16, 1 << 20)
        _check_range("max_images", self.max_images, 1, 64)
        _check_range("save_steps", self.save_steps, 1, 1 << 30)
        _check_range("save_total_limit", self.save_total_limit, 1, 1000)
        _check_range("logging_steps", self.logging_steps, 1, 1 << 30)
        if self.max_turns is not None:
            _check_range("max_turns", self.max_turns, 1, 1000)
        if self.text_only_ratio is not None:
            _check_range("text_only_ratio", self.text_only_ratio, 0.0, 0.95)
        if (self.max_steps == 0 and not self.closed_form_only()) or self.max_steps < -1:
            raise ConfigError(
                f"max_steps={self.max_steps}: use a positive number, or -1 to train num_train_epochs "
                "(0 only for a projector stage with init: ridge, fitted without gradient steps)"
            )
        if self.max_steps == -1 and self.num_train_epochs <= 0:
            raise ConfigError(f"num_train_epochs={self.num_train_epochs} must be > 0")
        if self.time_budget_s < 0 or (self.time_budget_s > 0 and self.max_steps < 1):
            raise ConfigError(
                f"time_budget_s={self.time_budget_s}: use 0 (off) or seconds > 0 with max_steps >= 1 as the cap"
            )
        _check_range("budget_calibration_steps", self.budget_calibration_steps, 2, 1 << 20)
        _check_range("verdict_loss_weight", self.verdict_loss_weight, 0.0, 1000.0)
        if self.bf16 and self.fp16:
            raise ConfigError(f"bf16: {str(self.bf16).lower()} and fp16: true: pick one")

    def closed_form_only(self) -> bool:
        """True for a projector stage that is fitted in closed form and not trained afterwards."""
        return False


@dataclass
class ProjectorConfig(TrainConfig):
    """Stage 1: align the projector on captions; the tower and the LM stay frozen."""

    stage: Stage = field("projector", help="projector (stage 1)")
    learning_rate: float = field(1e-3, help="projector learning rate (LLaVA-1.5: 1e-3)")
    feature_cache: bool = field(True, help="the tower is frozen, so its features can be cached")
    init: Literal["random", "ridge"] = field(
        "random",
        help="projector start: the build's random init, or a ridge fit of mean tower features onto "
        "caption embeddings (thinchat.train.projector_init; needs the feature cache)",
    )
    ridge_alpha: float = field(1.0, help="ridge penalty, relative to the mean eigenvalue of the feature Gram")
    ridge_terms: bool = field(
        False,
        help="with init: ridge, also give each lexicon term of the captions (minerals, matrix, cements, "
        "alterations) a gated classifier unit that adds the term's word embedding to the image tokens "
        "(thinchat.train.projector_terms)",
    )
    terms_alpha: float = field(0.1, help="ridge penalty of the term classifiers (relative, as ridge_alpha)")

    def closed_form_only(self) -> bool:
        return self.init == "ridge" and self.max_steps == 0

    def validate(self) -> None:
        super().validate()
        _check_range("ridge_alpha", self.ridge_alpha, 1e-6, 1e6)
        _check_range("terms_alpha", self.terms_alpha, 1e-6, 1e6)
        if self.ridge_terms and self.init != "ridge":
            raise ConfigError(
                "ridge_terms: true needs init: ridge (the term units are part of the closed-form fit)"
            )
        if self.init == "ridge" and not self.feature_cache:
            raise ConfigError("init: ridge fits on cached tower features; set feature_cache: true")


@dataclass
class LoraStageConfig(TrainConfig):
    """Stage 2: LoRA on the language model (peft), projector trained in full with its own learning rate."""

    stage: Stage = field("lora", help="lora (stage 2)")
    learning_rate: float = field(2e-4, help="LoRA learning rate (LLaVA-1.5: 2e-4)")
    projector_lr: float | None = field(2e-5, help="projector learning rate (LLaVA-1.5 LoRA: 2e-5)")
    lora_r: int = field(128, help="LoRA rank")
    lora_alpha: int = field(256, help="LoRA scaling alpha")
    lora_dropout: float = field(0.05, help="dropout on the LoRA input")
    lora_init: Literal["default", "pissa", "lora_ga"] = field(
        "default",
        help="default (B = 0), pissa (principal singular vectors of each weight) or lora_ga (singular "
        "vectors of the full fine-tuning gradient on lora_ga_batches batches); see thinchat/train/lora_init.py",
    )
    lora_ga_batches: int = field(8, help="training batches whose mean gradient initialises lora_ga")
    lora_target: list[str] = field(
        ["all-linear"], help="LM module names to adapt (e.g. q_proj, v_proj) or all-linear; only in the LM"
    )
    train_projector: bool = field(True, help="train the projector (saved in the adapter via modules_to_save)")
    tower_lora: bool = field(False, help="also put LoRA on the vision tower's linear layers")
    unfreeze_tower: bool = field(False, help="train the whole vision tower (saved with the adapter)")
    feature_cache: bool = field(True, help="cache tower features (ignored when the tower is trained)")
    base_dtype: Literal["auto", "float32"] = field(
        "auto",
        help="precision of the frozen base weights: auto (bf16 when training in bf16, else fp32) or "
        "float32 (fp32 weights, cast at each matmul under bf16 autocast: slower, and the base's "
        "activations stay as the fp32 model computes them)",
    )

    def validate(self) -> None:
        super().validate()
        _check_range("lora_r", self.lora_r, 1, 4096)
        _check_range("lora_alpha", self.lora_alpha, 1, 1 << 16)
        _check_range("lora_dropout", self.lora_dropout, 0.0, 0.9)
        if not self.lora_target:
            raise ConfigError("lora_target is empty: name LM modules (q_proj, v_proj, ...) or use all-linear")
        _check_range("lora_ga_batches", self.lora_ga_batches, 1, 4096)
        if self.tower_lora and self.unfreeze_tower:
            raise ConfigError("tower_lora and unfreeze_tower are both true: pick one way to train the tower")


@dataclass
class QLoraConfig(LoraStageConfig):
    """Stage 2 with the LM quantised to 4 bit by bitsandbytes (CUDA only)."""

    stage: Stage = field("qlora", help="qlora (stage 2, CUDA)")
    quant_type: Literal["nf4", "fp4"] = field("nf4", help="4-bit data type")
    double_quant: bool = field(True, help="quantise the quantisation constants too")

    def validate(self) -> None:
        super().validate()
        if self.lora_init != "default":
            raise ConfigError(
                f"lora_init: {self.lora_init} rewrites the base weights, which are 4-bit under qlora; "
                "use lora_init: default (or stage: lora)"
            )


@dataclass
class FullConfig(TrainConfig):
    """Full fine-tuning of the LM and the projector (tower optional)."""

    stage: Stage = field("full", help="full")
    learning_rate: float = field(2e-5, help="learning rate (LLaVA-1.5 full: 2e-5)")
    unfreeze_tower: bool = field(False, help="train the vision tower too")
    gradient_checkpointing: bool = field(True, help="recompute activations to save memory")
    feature_cache: bool = field(True, help="cache tower features (ignored when the tower is trained)")


@dataclass
class ClipCapStageConfig(TrainConfig):
    """ThinGPT/ClipCap data (``thinchat data import-clipcap``): a prefix MLP from pooled embeddings + LoRA.

    ``data`` / ``val_data`` are import directories (conversations.json + clip_embeddings.safetensors). The
    base Llava stays unchanged; the prefix, the LoRA adapter (ThinGPT's "finetune" mode; ``lora: false``
    is ClipCap's frozen-LM mode) and the processor are written to ``output_dir``
    (``thinchat.clipcap.train``), which every front end loads.
    """

    stage: Stage = field("clipcap", help="clipcap (a prefix for imported ClipCap embeddings)")
    data: str = field("data/clipcap/train", help="directory written by `thinchat data import-clipcap`")
    val_data: str | None = field(
        None, help="held-out import directory: loss and one sample generation every eval_steps"
    )
    prefix_tokens: int = field(10, help="LM tokens each embedding becomes (ClipCap: 10)")
    learning_rate: float = field(1e-3, help="LoRA learning rate")
    projector_lr: float | None = field(2e-3, help="prefix MLP learning rate (None: learning_rate)")
    max_steps: int = field(240, help="optimizer steps")
    per_device_train_batch_size: int = field(2, help="samples per step (small steps learn faster on CPU)")
    gradient_accumulation_steps: int = field(
        1, help="forward passes per optimizer step (small steps learn faster on CPU)"
    )
    lora: bool = field(
        True, help="LoRA on the LM's linear layers (ThinGPT's finetune mode); false: frozen LM"
    )
    lora_r: int = field(16, help="LoRA rank")
    lora_alpha: int = field(32, help="LoRA scaling alpha")
    lora_dropout: float = field(0.0, help="dropout on the LoRA input")
    lora_target: list[str] = field(["all-linear"], help="LM module names to adapt, or all-linear")
    encoder: str | None = field(
        None, help="tower of the embeddings for new images (None: what the import recorded)"
    )
    sample_max_new_tokens: int = field(96, help="length cap of the sample generation logged at each eval")
    save_steps: int = field(60, help="write a checkpoint every N steps")
    eval_steps: int | None = field(None, help="held-out loss + sample every N steps (None: save_steps)")

    def validate(self) -> None:
        super().validate()
        _check_range("prefix_tokens", self.prefix_tokens, 1, 256)
        _check_range("lora_r", self.lora_r, 1, 4096)
        _check_range("lora_alpha", self.lora_alpha, 1, 1 << 16)
        _check_range("lora_dropout", self.lora_dropout, 0.0, 0.9)
        _check_range("sample_max_new_tokens", self.sample_max_new_tokens, 1, 4096)
        if self.max_steps < 1:
            raise ConfigError(f"max_steps={self.max_steps}: the clipcap stage needs a positive step count")
        if self.rotations:
            raise ConfigError("rotations: true turns images; the clipcap stage reads stored embeddings")
        for key in ("data", "val_data"):
            value = getattr(self, key)
            if value and not Path(value).is_dir() and Path(value).suffix == ".json":
                raise ConfigError(
                    f"{key}={value}: the clipcap stage reads a directory `thinchat data import-clipcap` "
                    "wrote (conversations.json + clip_embeddings.safetensors), not a JSON file"
                )


STAGE_CLASSES: dict[str, type[TrainConfig]] = {
    "projector": ProjectorConfig,
    "lora": LoraStageConfig,
    "qlora": QLoraConfig,
    "full": FullConfig,
    "clipcap": ClipCapStageConfig,
}


def load_train_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
    """Read the YAML, pick the stage's class from its ``stage`` key (or an override), and build it."""
    data = read_yaml(path, overrides)
    stage = data.get("stage", "lora")
    if stage not in STAGE_CLASSES:
        raise ConfigError(f"{path or 'config'}: stage {stage!r} is not one of {list(STAGE_CLASSES)}")
    try:
        return from_dict(STAGE_CLASSES[stage], data)
    except ConfigError as exc:
        raise ConfigError(f"{path or 'config'}: {exc}") from exc


def config_dict(config: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)
