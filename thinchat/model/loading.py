"""One loader for every checkpoint thinchat writes: base, stage-1, LoRA (stage 2), merged and ClipCap.

Why: VisualGLM's fine-tuned weights did not load in its own web demo because each entry point had
its own loader. Here the CLI, the web demo, the server, evaluation and export all call
``load_pretrained``, which recognises a ClipCap stage output by its ``clipcap_prefix.json`` and
otherwise loads a Llava directory or a peft adapter on one (:mod:`thinchat.model.checkpoint`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from thinchat.model.checkpoint import load_llava


def load_pretrained(
    path: str | Path, device: str | None = None, dtype: Any = None, merge: bool = False, clipcap: bool = True
):
    """Return ``(model, processor)`` in eval mode; a LoRA checkpoint is wrapped in peft (or merged).

    A ``clipcap`` stage output (``clipcap_prefix.json``) comes back as the adapter pair of
    ``thinchat.clipcap.model`` (``clipcap=False``: its Llava part alone), which every front end drives
    like a Llava.
    """
    if clipcap:
        from thinchat.clipcap.prefix import is_clipcap_dir

        if is_clipcap_dir(Path(path).expanduser()):
            from thinchat.clipcap.model import load_clipcap

            return load_clipcap(path, device=device, dtype=dtype, merge=merge)
    return load_llava(path, device=device, dtype=dtype, merge=merge)
