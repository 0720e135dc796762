"""Load the base Llava for a stage and decide which weights train: freezing, peft LoRA, 4-bit QLoRA.

Why LoRA targets are resolved here and not left to peft's suffix matching: a list like
``["q_proj", "v_proj"]`` also matches CLIP/SigLIP attention in the vision tower. The targets are turned
into one regex anchored at ``model.language_model.`` (plus the tower only when asked), and the run fails
before training when nothing matched.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path

from thinchat.errors import ConfigError, ModelSpecError, ThinchatError
from thinchat.train.config import FullConfig, LoraStageConfig, ProjectorConfig, QLoraConfig, TrainConfig

log = logging.getLogger(__name__)

LM_PREFIX = "model.language_model."
TOWER_PREFIX = "model.vision_tower."
PROJECTOR = "multi_modal_projector"


def _linear_types():
    import torch
    from transformers.pytorch_utils import Conv1D

    return (torch.nn.Linear, Conv1D)


def linear_leaf_names(model, prefix: str) -> list[str]:
    """Sorted distinct last-name components of the linear layers under ``prefix`` (q_proj, c_attn, ...)."""
    types = _linear_types()
    return sorted(
        {
            name.rsplit(".", 1)[-1]
            for name, module in model.named_modules()
            if name.startswith(prefix) and isinstance(module, types)
        }
    )


def target_regex(model, targets: list[str], prefix: str) -> str:
    """A regex matching exactly the linear layers under ``prefix`` whose last name is in ``targets``."""
    available = linear_leaf_names(model, prefix)
    if targets == ["all-linear"]:
        chosen = available
    else:
        missing = [t for t in targets if t not in available]
        if missing:
            raise ConfigError(
                f"lora_target {missing} not found under {prefix.rstrip('.')}; its linear layers are {available}"
            )
        chosen = list(targets)
    if not chosen:
        raise ConfigError(f"no linear layers under {prefix.rstrip('.')} to put LoRA on")
    return re.escape(prefix) + r"(?:.*\.)?(?:" + "|".join(re.escape(c) for c in chosen) + ")"


def lora_targets(model, config: LoraStageConfig) -> str:
    """The full regex peft gets as ``target_modules`` (``re.fullmatch`` against module names)."""
    parts = [target_regex(model, config.lora_target, LM_PREFIX)]
    if config.tower_lora:
        parts.append(target_regex(model, ["all-linear"], TOWER_PREFIX))
    return "|".join(f"(?:{p})" for p in parts)


def check_qlora_possible() -> None:
    """QLoRA needs CUDA and bitsandbytes; say so before loading any weights."""
    import importlib.util

    import torch

    if not torch.cuda.is_available():
        raise ThinchatError(
            "stage qlora needs a CUDA GPU (bitsandbytes 4-bit); none is available here. "
            "Use stage: lora (configs/finetune_lora_cpu.yaml) on CPU"
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ThinchatError("stage qlora needs bitsandbytes: pip install 'thinchat[qlora]'")


def load_base(config: TrainConfig, dtype=None):
    """``(model, processor)`` from the base directory; QLoRA loads the LM in 4 bit."""
    import torch
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    base = Path(config.model)
    if not (base / "config.json").is_file():
        raise ModelSpecError(
            f"model={base}: not a Llava checkpoint directory (no config.json); build one with "
            "`thinchat build --vision ... --llm ... --out checkpoints/base` or use a stage-1 output"
        )
    kwargs = {"dtype": dtype or torch.float32}
    if isinstance(config, QLoraConfig):
        from transformers import BitsAndBytesConfig

        compute = torch.bfloat16 if config.bf16 else torch.float16
        kwargs = {
            "dtype": compute,
            "quantization_config": BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type=config.quant_type,
                bnb_4bit_use_double_quant=config.double_quant,
                bnb_4bit_compute_dtype=compute,
                llm_int8_skip_modules=["vision_tower", PROJECTOR, "lm_head"],
            ),
        }
    try:
        processor = AutoProcessor.from_pretrained(base)
        model = LlavaForConditionalGeneration.from_pretrained(base, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelSpecError(f"{base}: could not load a Llava checkpoint ({exc})") from exc
    return model, processor


def tower_trainable(config: TrainConfig) -> bool:
    return bool(getattr(config, "unfreeze_tower", False) or getattr(config, "tower_lora", False))


def prepare_model(
    model, config: TrainConfig, gradient_batches: Callable[[], tuple[list, Callable]] | None = None
):
    """Freeze / wrap ``model`` for the stage; returns the model the Trainer trains.

    ``gradient_batches`` (for ``lora_init: lora_ga``) returns the batches and the loss function whose
    mean gradient initialises the adapter.
    """
    model.config.use_cache = False
    for param in model.parameters():
        param.requires_grad = False
    projector = model.model.multi_modal_projector
    if isinstance(config, ProjectorConfig):
        for param in projector.parameters():
            param.requires_grad = True
        return model
    if isinstance(config, FullConfig):
        for name, param in model.named_parameters():
            in_tower = name.startswith(TOWER_PREFIX)
            param.requires_grad = not in_tower or config.unfreeze_tower
        return model
    if isinstance(config, LoraStageConfig):
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

        if isinstance(config, QLoraConfig):
            model = prepare_model_for_kbit_training(
                model, use_gradient_checkpointing=config.gradient_checkpointing
            )
        save = ([PROJECTOR] if config.train_projector else []) + (
            ["vision_tower"] if config.unfreeze_tower else []
        )
        from thinchat.train.lora_init import estimate_gradients, peft_init_kwargs

        lora = LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=lora_targets(model, config),
            modules_to_save=save or None,
            bias="none",
            **peft_init_kwargs(config.lora_init),
        )
        if config.lora_init == "lora_ga":
            if gradient_batches is None:
                raise ConfigError("lora_init: lora_ga needs training batches to estimate the gradient")
            estimate_gradients(model, lora, *gradient_batches())
        model = get_peft_model(model, lora)
        return model
    raise ConfigError(f"unknown stage {config.stage!r}")


def count_trainable(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
