"""Merge a LoRA checkpoint into a standalone standard Llava directory.

Why: a merged checkpoint loads with plain transformers (and vLLM, llama.cpp converters...) with no peft
and no base model beside it, and runs as fast as the base. peft's ``merge_and_unload`` folds every
LoRA delta into its linear layer and puts the trained ``modules_to_save`` copy (the projector) in place.
The output is written to a temporary sibling directory and renamed at the end, so a failed export
never leaves a half-written checkpoint under the requested name.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from thinchat.errors import ConfigError, ModelSpecError
from thinchat.precision import DTYPE_NAMES

log = logging.getLogger(__name__)


def export(
    checkpoint: str | Path,
    out: str | Path,
    merge: bool = True,
    dtype: str = "float32",
    overwrite: bool = False,
) -> Path:
    """Write ``checkpoint`` (LoRA or standard) to ``out`` as a standard Llava directory."""
    import torch

    from thinchat.model.checkpoint import is_adapter_dir
    from thinchat.model.loading import load_pretrained

    checkpoint, out = Path(checkpoint), Path(out)
    if dtype not in DTYPE_NAMES:
        raise ConfigError(f"--dtype {dtype}: choose one of {', '.join(DTYPE_NAMES)}")
    if not checkpoint.is_dir():
        raise ModelSpecError(f"{checkpoint}: checkpoint directory not found")
    if is_adapter_dir(checkpoint) and not merge:
        raise ConfigError(
            f"{checkpoint} is a LoRA checkpoint: add --merge to fold the adapter into the weights"
        )
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"{out} exists and is not empty; choose another --out or add --overwrite")
    if out.resolve() == checkpoint.resolve():
        raise ConfigError("--out must differ from --from_pretrained")
    # Merged in fp32 whatever inference would choose on this host: a LoRA delta added to bf16 weights
    # is rounded to bf16's 8-bit mantissa, and an fp32 export must hold what training computed.
    model, processor = load_pretrained(checkpoint, dtype="float32", merge=True)
    model = model.to(getattr(torch, DTYPE_NAMES[dtype]))
    model.config.use_cache = True
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    log.info("wrote merged Llava checkpoint %s (%s)", out, DTYPE_NAMES[dtype])
    return out
