"""The Llava model inside the wrappers training puts round it: peft, DDP, DeepSpeed.

Why here: the feature cache (``thinchat.train.embeds``), the closed-form projector fit and the ClipCap
adapter (``thinchat.clipcap.model``) all reach the Llava modules of a wrapped model; the model
package holds the one way to find them, so none of them imports another's layer for it.
"""

from __future__ import annotations

from typing import Any

#: Wrappers we look through to find the Llava model: peft (get_base_model), DDP / DeepSpeed (module).
_MAX_UNWRAP = 8


def unwrap_llava(model: Any) -> Any:
    """The ``LlavaForConditionalGeneration`` inside peft, DDP or DeepSpeed wrappers (or ``model`` itself).

    peft injects its LoRA layers and ``modules_to_save`` copies *into* the base model, so calling the
    base model's submodules still runs the adapter: unwrapping loses nothing.
    """
    current = model
    for _ in range(_MAX_UNWRAP):
        if hasattr(current, "multi_modal_projector") or hasattr(
            getattr(current, "model", None), "multi_modal_projector"
        ):
            return current
        if hasattr(current, "get_base_model"):
            current = current.get_base_model()
        elif hasattr(current, "module"):
            current = current.module
        else:
            break
    raise TypeError(
        f"{type(model).__name__} is not a Llava model (no multi_modal_projector found inside it); "
        "the feature cache works with transformers LlavaForConditionalGeneration, bare or wrapped in peft"
    )


def llava_parts(model: Any):
    """``(llava_for_conditional_generation, llava_model)`` for any wrapped Llava."""
    llava = unwrap_llava(model)
    inner = (
        llava.model if hasattr(llava, "model") and hasattr(llava.model, "multi_modal_projector") else llava
    )
    return llava, inner
