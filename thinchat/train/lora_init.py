"""LoRA initialisations that start from the model's weights or gradients: peft's PiSSA and LoRA-GA.

Why: standard LoRA starts with B = 0, so its first steps only grow B and the adapter follows the full
fine-tuning direction late; on a CPU budget of a few hundred steps that start is a large share of the
run. PiSSA (arXiv 2404.02948) puts the adapter on each weight's principal singular directions; LoRA-GA
(arXiv 2407.05000) on the singular directions of the full fine-tuning gradient, estimated on a few
training batches, so the first LoRA steps move the weights the way full fine-tuning would.

Both move part of each weight into the adapter (W = W_res + s B0 A0): training runs on the residual
base. The final adapter is converted by peft (``path_initial_model_for_weight_conversion``) into a plain
rank-2r LoRA on the *unchanged* base, so the output loads, merges and serves like any other adapter.
Intermediate ``checkpoint-N`` folders hold the unconverted adapter: they are for ``--resume``, which
rebuilds the same residual base first.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Subfolder of ``output_dir`` with the adapter as initialised (what the conversion subtracts).
INITIAL_ADAPTER = "initial_adapter"
LORA_INITS = ("default", "pissa", "lora_ga")


def peft_init_kwargs(lora_init: str) -> dict[str, Any]:
    """``LoraConfig`` keyword arguments for ``lora_init``."""
    if lora_init == "default":
        return {"init_lora_weights": True}
    if lora_init == "pissa":
        return {"init_lora_weights": "pissa"}
    if lora_init == "lora_ga":
        from peft import LoraGAConfig

        return {"init_lora_weights": "lora_ga", "lora_ga_config": LoraGAConfig()}
    raise ValueError(f"lora_init {lora_init!r}: expected one of {', '.join(LORA_INITS)}")


def mutates_base(lora_init: str) -> bool:
    return lora_init != "default"


def estimate_gradients(
    model: Any, lora_config: Any, batches: list[dict[str, Any]], loss_fn: Callable
) -> None:
    """Attach LoRA-GA's gradient estimate (mean over ``batches``) to the target layers of ``model``."""
    from peft.tuners.lora.loraga import preprocess_loraga

    def train_step() -> None:
        for batch in batches:
            (loss_fn(model, batch) / len(batches)).backward()

    preprocess_loraga(model, lora_config, train_step)


def gradient_batches(config: Any, train_set: Any, feature_cache: Any) -> tuple[list, Any]:
    """``lora_ga_batches`` seeded training batches and the training loss, for LoRA-GA's gradient estimate."""
    import torch

    from thinchat.train.dataset import Collator
    from thinchat.train.trainer import logits_only_where_scored, model_inputs

    size = config.per_device_train_batch_size
    order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(config.seed)).tolist()
    count = min(config.lora_ga_batches * size, len(order))
    collate = Collator(train_set.processor.tokenizer.pad_token_id)
    batches = [collate([train_set[i] for i in order[j : j + size]]) for j in range(0, count, size)]

    def loss(model: Any, batch: dict[str, Any]) -> Any:
        return model(**logits_only_where_scored(model_inputs(model, batch, feature_cache))).loss

    log.info("lora_ga: estimating the full fine-tuning gradient on %d batches", len(batches))
    return batches, loss


def save_initial_adapter(model: Any, output_dir: Path) -> Path:
    """Write the adapter as initialised; marked ``init_lora_weights: True`` so loading it does not re-init."""
    config = model.peft_config["default"]
    init = config.init_lora_weights
    config.init_lora_weights = True
    try:
        model.save_pretrained(str(output_dir / INITIAL_ADAPTER))
    finally:
        config.init_lora_weights = init
    return output_dir / INITIAL_ADAPTER


def save_converted(model: Any, output_dir: Path) -> None:
    """Save the trained adapter as a plain LoRA on the original (un-mutated) base weights.

    peft 0.21's conversion keeps only the ``lora_A`` / ``lora_B`` tensors, so the ``modules_to_save``
    weights (the projector) are written back into the converted file.
    """
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file, save_file

    model.save_pretrained(
        str(output_dir), path_initial_model_for_weight_conversion=str(output_dir / INITIAL_ADAPTER)
    )
    kept = {k: v for k, v in get_peft_model_state_dict(model).items() if ".lora_" not in k}
    if kept:
        path = output_dir / "adapter_model.safetensors"
        tensors = load_file(path)
        tensors.update({k: v.detach().contiguous() for k, v in kept.items()})
        save_file(tensors, path, metadata={"format": "pt"})
