"""The Llava checkpoint directory format: a standard Llava directory, or a LoRA adapter on one.

Why apart from :mod:`thinchat.model.loading`: the ClipCap adapter (:mod:`thinchat.clipcap.model`) loads its
Llava part through this same code, and :func:`thinchat.model.loading.load_pretrained` dispatches to ClipCap,
so the shared part sits below both.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from thinchat.errors import ModelSpecError
from thinchat.precision import resolve_dtype

CHECKPOINT_META = "thinchat_checkpoint.json"


def is_adapter_dir(path: Path) -> bool:
    return (path / "adapter_config.json").is_file()


def base_model_path(adapter_dir: Path) -> Path:
    """The base Llava directory a LoRA checkpoint was trained on (relative paths are from the adapter dir)."""
    meta_file = adapter_dir / CHECKPOINT_META
    if meta_file.is_file():
        base = json.loads(meta_file.read_text(encoding="utf-8")).get("base_model")
    else:
        base = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8")).get(
            "base_model_name_or_path"
        )
    if not base:
        raise ModelSpecError(
            f"{adapter_dir}: LoRA checkpoint does not say which base model it was trained on"
        )
    base_path = Path(base)
    if not base_path.is_absolute():
        base_path = (adapter_dir / base_path).resolve()
    if not (base_path / "config.json").is_file():
        raise ModelSpecError(
            f"{adapter_dir}: its base model {base_path} is missing; rebuild it (thinchat build) or export a merged "
            "checkpoint with `thinchat export --merge`"
        )
    return base_path


def load_llava(path: str | Path, device: str | None = None, dtype: Any = None, merge: bool = False):
    """``(LlavaForConditionalGeneration, processor)`` in eval mode; a LoRA checkpoint is wrapped in peft
    (or merged). The processor comes from the checkpoint when it has one, else from its base. ``dtype``
    None / "auto": ``thinchat.precision.inference_dtype`` for ``device`` (bf16 on a GPU and on a CPU
    whose bf16 matmuls measure faster)."""
    from transformers import AutoProcessor

    from thinchat.model.projector import load_llava_model

    path = Path(path).expanduser()
    if not path.is_dir():
        raise ModelSpecError(
            f"{path}: checkpoint directory not found (expected the output of thinchat build/train/export)"
        )
    adapter = is_adapter_dir(path)
    base = base_model_path(path) if adapter else path
    if not (base / "config.json").is_file():
        raise ModelSpecError(f"{path}: no config.json; not a Llava checkpoint directory")
    processor_dir = (
        path
        if (path / "processor_config.json").is_file() or (path / "tokenizer_config.json").is_file()
        else base
    )
    weights_dtype = resolve_dtype(dtype, device)  # a bad name is a ConfigError, not a load failure
    try:
        processor = AutoProcessor.from_pretrained(processor_dir)
        model = load_llava_model(base, dtype=weights_dtype)
    except (OSError, ValueError) as exc:
        raise ModelSpecError(f"{base}: could not load a Llava checkpoint ({exc})") from exc
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, path)
        if merge:
            model = model.merge_and_unload()
    if device:
        model = model.to(device)
    return model.eval(), processor
