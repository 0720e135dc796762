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


def check_qlora_possible(config: TrainConfig | None = None) -> None:
    """QLoRA needs bitsandbytes with 4-bit kernels for the training device; say so before loading weights.

    Why try a quantisation instead of requiring CUDA: bitsandbytes (0.46 and later) also quantises to 4
    bit on CPU, so QLoRA runs (slowly) and is tested on CPU; builds without a kernel for the device fail
    this probe and the run stops with a message.
    """
    import importlib.util

    import torch

    if importlib.util.find_spec("bitsandbytes") is None:
        raise ThinchatError("stage qlora needs bitsandbytes: pip install 'thinchat[qlora]'")
    on_gpu = torch.cuda.is_available() and not getattr(config, "cpu", False)
    device = "cuda" if on_gpu else "cpu"
    try:
        import bitsandbytes.functional as bnbf

        bnbf.quantize_4bit(torch.ones(64, 64, device=device, dtype=torch.bfloat16), quant_type="nf4")
    except Exception as exc:  # any failure means no usable 4-bit kernel on this device
        raise ThinchatError(
            f"stage qlora: this bitsandbytes cannot quantise to 4 bit on {device} ({exc}); "
            "install bitsandbytes >= 0.46 or use stage: lora (configs/finetune_lora_cpu.yaml on CPU)"
        ) from exc


def qlora_skip_modules(base: str | Path) -> list[str]:
    """Full module names that must stay in floating point under 4-bit loading: tower, projector, LM head.

    Why full names read off the model: transformers matches ``llm_int8_skip_modules`` from the start of
    a module's name (up to a dot) or as a suffix, and in transformers 5 the tower is
    ``model.vision_tower``, so the short names ``vision_tower`` / ``multi_modal_projector`` match
    nothing: the tower and the projector were quantised and peft could not train the projector. The
    model is built on the meta device (no weights, no memory) and its own names are taken.
    """
    import torch
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    config = LlavaConfig.from_pretrained(base)
    with torch.device("meta"):
        skeleton = LlavaForConditionalGeneration(config)
    wanted = {"vision_tower", PROJECTOR}
    head = skeleton.get_output_embeddings()
    names = [
        name
        for name, module in skeleton.named_modules()
        if name.rsplit(".", 1)[-1] in wanted or (head is not None and module is head)
    ]
    found = {name.rsplit(".", 1)[-1] for name in names}
    if not wanted <= found or head is None:
        raise ModelSpecError(f"{base}: no vision tower / projector / LM head found to keep out of 4 bit")
    return names


def compute_dtype(config: TrainConfig):
    """The dtype QLoRA dequantises to and keeps the float parts in: bf16, fp16, or fp32 when neither."""
    import torch

    if config.bf16:
        return torch.bfloat16
    return torch.float16 if config.fp16 else torch.float32


def base_dtype(config: TrainConfig):
    """The dtype the frozen base is loaded in: bf16 for LoRA training in bf16 on a GPU, else fp32.

    Why: with an fp32 base under bf16 autocast every matmul first casts its fp32 weight to bf16 and
    reads twice the bytes, in the forward and again in the backward, and a frozen weight never needs
    fp32. The trained weights (LoRA, projector) stay fp32 (``prepare_model``, peft's adapter autocast)
    so AdamW updates keep full precision. Only LoRA: its output is an adapter, while stage 1 and full
    fine-tuning save the whole model, which must not come out rounded to bf16; CPU runs keep fp32.
    """
    import torch

    on_gpu = torch.cuda.is_available() and not config.cpu
    if on_gpu and config.bf16 is True and isinstance(config, LoraStageConfig):
        return torch.bfloat16
    return torch.float32


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
    kwargs: dict = {"dtype": dtype or base_dtype(config)}
    if isinstance(config, QLoraConfig):
        from transformers import BitsAndBytesConfig

        compute = compute_dtype(config)
        on_gpu = torch.cuda.is_available() and not config.cpu
        kwargs = {
            "dtype": compute,
            "device_map": {"": torch.cuda.current_device() if on_gpu else "cpu"},
            "quantization_config": BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type=config.quant_type,
                bnb_4bit_use_double_quant=config.double_quant,
                bnb_4bit_compute_dtype=compute,
                llm_int8_skip_modules=qlora_skip_modules(base),
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
    if isinstance(config, (ProjectorConfig, LoraStageConfig)) and not isinstance(config, QLoraConfig):
        projector.float()  # trained weights keep fp32 (AdamW) on a bf16 base; a no-op on an fp32 one
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
