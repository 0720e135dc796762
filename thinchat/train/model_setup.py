"""What the stages (``thinchat.train.stages``) build on: LoRA targets, QLoRA checks, loading the base.

Why LoRA targets are resolved here and not left to peft's suffix matching: a list like
``["q_proj", "v_proj"]`` also matches CLIP/SigLIP attention in the vision tower. The targets are turned
into one regex anchored at ``model.language_model.`` (plus the tower only when asked), and the run fails
before training when nothing matched.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from thinchat.errors import ConfigError, ModelSpecError, ThinchatError
from thinchat.train.config import LoraStageConfig, TrainConfig

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
    on_gpu = torch.cuda.is_available() and not (config is not None and config.cpu)
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
    ``model.vision_tower``, so the short names ``vision_tower`` / ``multi_modal_projector`` would match
    nothing: the tower and the projector would be quantised and peft could not train the projector. The
    model is built on the meta device (no weights, no memory) and its own names are taken.
    """
    import torch
    from transformers import LlavaConfig

    from thinchat.model.projector import llava_class

    config = LlavaConfig.from_pretrained(base)
    with torch.device("meta"):
        skeleton = llava_class(config)(config)
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


def load_base_dir(base: str | Path, **kwargs: Any) -> tuple[Any, Any]:
    """``(model, processor)`` of a base Llava directory; ``kwargs`` go to ``from_pretrained`` (the stage's
    dtype, QLoRA's quantisation: ``thinchat.train.stages``)."""
    from transformers import AutoProcessor

    from thinchat.model.projector import load_llava_model

    base = Path(base)
    if not (base / "config.json").is_file():
        raise ModelSpecError(
            f"model={base}: not a Llava checkpoint directory (no config.json); build one with "
            "`thinchat build --vision ... --llm ... --out checkpoints/base` or use a stage-1 output"
        )
    try:
        processor = AutoProcessor.from_pretrained(base)
        model = load_llava_model(base, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelSpecError(f"{base}: could not load a Llava checkpoint ({exc})") from exc
    return model, processor


def count_trainable(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
