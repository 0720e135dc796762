"""One loader for every checkpoint thinchat writes: base, stage-1, LoRA (stage 2) and merged.

Why: VisualGLM's fine-tuned weights did not load in its own web demo because each entry point had
its own loader. Here the CLI, the web demo, the server, evaluation and export all call
``load_pretrained``, which recognises a peft adapter directory by its ``adapter_config.json`` and
otherwise loads a standard Llava directory with plain transformers.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from thinchat.errors import ModelSpecError

log = logging.getLogger(__name__)

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


def load_pretrained(
    path: str | Path, device: str | None = None, dtype=None, merge: bool = False, clipcap: bool = True
):
    """Return ``(model, processor)`` in eval mode; a LoRA checkpoint is wrapped in peft (or merged).

    A ``clipcap`` stage output (``clipcap_prefix.json``) comes back as the adapter pair of
    ``thinchat.clipcap.model`` (``clipcap=False``: its Llava part alone), which every front end drives
    like a Llava.
    """
    import torch
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    path = Path(path).expanduser()
    if not path.is_dir():
        raise ModelSpecError(
            f"{path}: checkpoint directory not found (expected the output of thinchat build/train/export)"
        )
    if clipcap:
        from thinchat.clipcap.prefix import is_clipcap_dir

        if is_clipcap_dir(path):
            from thinchat.clipcap.model import load_clipcap

            return load_clipcap(path, device=device, dtype=dtype, merge=merge)
    adapter = is_adapter_dir(path)
    base = base_model_path(path) if adapter else path
    if not (base / "config.json").is_file():
        raise ModelSpecError(f"{path}: no config.json; not a Llava checkpoint directory")
    processor_dir = (
        path
        if (path / "processor_config.json").is_file() or (path / "tokenizer_config.json").is_file()
        else base
    )
    try:
        processor = AutoProcessor.from_pretrained(processor_dir)
        model = LlavaForConditionalGeneration.from_pretrained(base, dtype=dtype or torch.float32)
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
