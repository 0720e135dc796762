"""Silence library messages that do not apply to the run at hand, so the ones that do stay visible.

Each filter names one message and says why it does not apply:

- DeepSpeed's "Setting accelerator to CPU. If you have GPU ..." is printed whenever transformers imports
  DeepSpeed's glue, even when no DeepSpeed config is used. On a host without an NVIDIA device DeepSpeed's
  own ``DS_ACCELERATOR=cpu`` says the same thing quietly (only set when the user did not set it).
- peft's "PiSSA changes the base weights ... Consider converting" fires when the initial adapter is loaded
  for the conversion: thinchat converts every PiSSA adapter to a plain LoRA at the end of the stage
  (thinchat/train/lora_init.py), so the advice is already followed.
- transformers' "`is_gradient_checkpointing` is deprecated" FutureWarning comes from peft reading the old
  attribute name; nothing in thinchat can change it.
- bitsandbytes' "Failed to load CPU gemm_4bit_forward from kernels-community" is logged when peft imports
  bitsandbytes (it does whenever the package is installed); the 4-bit CPU kernel matters to QLoRA only,
  and ``thinchat train`` with ``stage: qlora`` checks the 4-bit path itself before loading weights.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path


def quiet_known_noise() -> None:
    """Install the filters above (idempotent)."""
    if "DS_ACCELERATOR" not in os.environ and not any(Path("/dev").glob("nvidia[0-9]*")):
        os.environ["DS_ACCELERATOR"] = "cpu"
    warnings.filterwarnings("ignore", message="PiSSA changes the base weights", category=UserWarning)
    warnings.filterwarnings(
        "ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning
    )
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
