"""One object per training stage: what it loads, what it trains, what it writes.

Why objects: the run (``thinchat.train.run``) is the same for every stage (check, load, prepare, train,
save); what differs is a handful of decisions. Each stage answers them in one class instead of
``isinstance`` / ``getattr`` tests spread over the run and the model setup, so a new stage is one class
and one line in :data:`STAGES`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from thinchat.errors import ConfigError
from thinchat.train import checkpoints
from thinchat.train.config import TrainConfig, config_dict
from thinchat.train.model_setup import (
    PROJECTOR,
    TOWER_PREFIX,
    check_qlora_possible,
    compute_dtype,
    load_base_dir,
    lora_targets,
    qlora_skip_modules,
)

log = logging.getLogger(__name__)

GradientBatches = Callable[[], tuple[list, Callable]]


def _on_gpu(config: TrainConfig) -> bool:
    import torch

    return torch.cuda.is_available() and not config.cpu


class Stage:
    """The decisions of a stage trained by ``ThinchatTrainer``; each method gets the stage's config."""

    #: False for a stage that builds its own data and trainer (:meth:`train`), as ``clipcap`` does.
    uses_trainer = True

    def check(self, config: TrainConfig) -> None:
        """Refuse what cannot work on this machine, before any weight loads."""

    def load_kwargs(self, config: TrainConfig) -> dict[str, Any]:
        """``from_pretrained`` arguments for the base: fp32 (a saved full model must not be rounded)."""
        import torch

        return {"dtype": torch.float32}

    def load(self, config: TrainConfig) -> tuple[Any, Any]:
        """``(model, processor)`` of the base directory ``config.model``."""
        return load_base_dir(config.model, **self.load_kwargs(config))

    def tower_trainable(self, config: TrainConfig) -> bool:
        """Whether the vision tower changes (then its features cannot be cached)."""
        return False

    def prepare(
        self, model: Any, config: TrainConfig, gradient_batches: GradientBatches | None = None
    ) -> Any:
        """Freeze / wrap ``model``; returns the model the Trainer trains."""
        raise NotImplementedError

    def fits_projector(self, config: TrainConfig) -> bool:
        """Whether the projector is fitted in closed form before training (``init: ridge``)."""
        return False

    def rewrites_base(self, config: TrainConfig) -> bool:
        """Whether the adapter initialisation changes the base weights in memory (see ``lora_init``)."""
        return False

    def save_final(
        self, trainer: Any, model: Any, processor: Any, config: TrainConfig, output_dir: Path
    ) -> None:
        """Write the trained model into ``output_dir``: a standard Llava directory."""
        trainer.save_model(str(output_dir))
        processor.save_pretrained(str(output_dir))

    def train(self, config: TrainConfig, resume: str | bool | None) -> Path:
        """A stage's own data and trainer (only where :attr:`uses_trainer` is False)."""
        raise NotImplementedError(f"stage {config.stage} trains with ThinchatTrainer")


def _freeze(model: Any) -> Any:
    model.config.use_cache = False
    for param in model.parameters():
        param.requires_grad = False
    return model.model.multi_modal_projector


class ProjectorStage(Stage):
    """Stage 1: only the projector trains (fp32 weights, also on a bf16 base)."""

    def prepare(
        self, model: Any, config: TrainConfig, gradient_batches: GradientBatches | None = None
    ) -> Any:
        projector = _freeze(model)
        projector.float()
        for param in projector.parameters():
            param.requires_grad = True
        return model

    def fits_projector(self, config: Any) -> bool:
        return config.init == "ridge"


class FullStage(Stage):
    """Full fine-tuning: everything but the tower trains (the tower too with ``unfreeze_tower``)."""

    def tower_trainable(self, config: Any) -> bool:
        return bool(config.unfreeze_tower)

    def prepare(self, model: Any, config: Any, gradient_batches: GradientBatches | None = None) -> Any:
        _freeze(model)
        for name, param in model.named_parameters():
            param.requires_grad = not name.startswith(TOWER_PREFIX) or config.unfreeze_tower
        return model


class LoraStage(Stage):
    """Stage 2: peft LoRA on the LM (and the tower with ``tower_lora``), the projector in ``modules_to_save``."""

    def load_kwargs(self, config: Any) -> dict[str, Any]:
        """bf16 for the frozen base when training in bf16 (GPU, or a CPU whose bf16 matmuls measure
        faster), else fp32.

        Why: with an fp32 base under bf16 autocast every matmul first casts its fp32 weight to bf16 and
        reads twice the bytes, in the forward and again in the backward, and a frozen weight never needs
        fp32 (on the quickstart's CPU recipe the casts take a fifth of a step). The trained weights
        (LoRA, projector) stay fp32 (:meth:`prepare`, peft's adapter autocast) so AdamW updates keep
        full precision. Only LoRA: its output is an adapter, while stage 1 and full fine-tuning save the
        whole model, which must not come out rounded to bf16. ``base_dtype: float32`` keeps the fp32
        base (slower; on the zh quickstart it scored no better, docs/experiments.md).
        """
        import torch

        low = config.bf16 is True and config.base_dtype == "auto"
        return {"dtype": torch.bfloat16 if low else torch.float32}

    def tower_trainable(self, config: Any) -> bool:
        return bool(config.unfreeze_tower or config.tower_lora)

    def rewrites_base(self, config: Any) -> bool:
        from thinchat.train.lora_init import mutates_base

        return mutates_base(config.lora_init)

    def _before_lora(self, model: Any, config: Any) -> Any:
        projector = _freeze(model)
        projector.float()  # trained weights keep fp32 (AdamW) on a bf16 base; a no-op on an fp32 one
        return model

    def prepare(self, model: Any, config: Any, gradient_batches: GradientBatches | None = None) -> Any:
        from peft import LoraConfig, get_peft_model

        from thinchat.train.lora_init import estimate_gradients, peft_init_kwargs

        model = self._before_lora(model, config)
        save = ([PROJECTOR] if config.train_projector else []) + (
            ["vision_tower"] if config.unfreeze_tower else []
        )
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
        return get_peft_model(model, lora)

    def save_final(self, trainer: Any, model: Any, processor: Any, config: Any, output_dir: Path) -> None:
        """The adapter, the processor and ``thinchat_checkpoint.json`` naming the base it was trained on."""
        if self.rewrites_base(config):
            from thinchat.train.lora_init import save_converted

            save_converted(model, output_dir)  # a plain LoRA on the unchanged base (see lora_init)
        else:
            trainer.save_model(str(output_dir))
        processor.save_pretrained(str(output_dir))
        base = Path(config.model).resolve()
        try:
            base_ref = os.path.relpath(base, output_dir.resolve())
        except ValueError:  # another drive on Windows
            base_ref = str(base)
        checkpoints.write_json_atomic(
            output_dir / "thinchat_checkpoint.json",
            {"base_model": base_ref, "stage": config.stage, "config": config_dict(config)},
        )


class QLoraStage(LoraStage):
    """LoRA on a 4-bit LM (bitsandbytes); the tower, projector and LM head stay in floating point."""

    def check(self, config: TrainConfig) -> None:
        check_qlora_possible(config)

    def load_kwargs(self, config: Any) -> dict[str, Any]:
        import torch
        from transformers import BitsAndBytesConfig

        compute = compute_dtype(config)
        return {
            "dtype": compute,
            "device_map": {"": torch.cuda.current_device() if _on_gpu(config) else "cpu"},
            "quantization_config": BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type=config.quant_type,
                bnb_4bit_use_double_quant=config.double_quant,
                bnb_4bit_compute_dtype=compute,
                llm_int8_skip_modules=qlora_skip_modules(Path(config.model)),
            ),
        }

    def _before_lora(self, model: Any, config: Any) -> Any:
        from peft import prepare_model_for_kbit_training

        _freeze(model)
        return prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=config.gradient_checkpointing
        )


class ClipCapStage(Stage):
    """A ClipCap prefix (+ LoRA on the LM) for imported embeddings, trained by ``thinchat.clipcap.train``."""

    uses_trainer = False

    def train(self, config: TrainConfig, resume: str | bool | None) -> Path:
        from thinchat.clipcap.train import train_clipcap

        losses = train_clipcap(config, resume=resume)
        if losses:
            log.info("clipcap stage: loss %.4f -> %.4f over %d steps", losses[0], losses[-1], len(losses))
        return Path(config.output_dir)


#: ``stage:`` key -> its stage object (the config classes are in ``thinchat.train.config.STAGE_CLASSES``).
STAGES: dict[str, Stage] = {
    "projector": ProjectorStage(),
    "lora": LoraStage(),
    "qlora": QLoraStage(),
    "full": FullStage(),
    "clipcap": ClipCapStage(),
}


def stage_for(config: TrainConfig) -> Stage:
    """The stage object for ``config.stage``."""
    try:
        return STAGES[config.stage]
    except KeyError:
        raise ConfigError(f"unknown stage {config.stage!r}") from None


def load_base(config: TrainConfig) -> tuple[Any, Any]:
    """``(model, processor)`` of the base as the stage loads it (QLoRA: the LM in 4 bit)."""
    return stage_for(config).load(config)


def prepare_model(model: Any, config: TrainConfig, gradient_batches: GradientBatches | None = None) -> Any:
    """Freeze / wrap ``model`` for the stage; returns the model the Trainer trains.

    ``gradient_batches`` (for ``lora_init: lora_ga``) returns the batches and the loss function whose
    mean gradient initialises the adapter.
    """
    return stage_for(config).prepare(model, config, gradient_batches)
