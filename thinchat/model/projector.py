"""Pixel shuffle before the projector: a view seen at a higher resolution for the same LM tokens.

Why: the LM's image tokens grow with the square of the view (84 px: 36 per DINOv2 view, 168 px: 144),
and on a CPU the LM's tokens are the cost. Idefics3, SmolVLM and nanoVLM fold each ``f x f`` block of the
tower's patch grid into one token of ``f^2`` times the width (space-to-depth) before a linear
projection, so a 168 px view costs the LM what an 84 px view costs with ``f = 2``.

transformers' Llava has no such projector, so a checkpoint built with ``pixel_shuffle > 1`` records
the factor in its config (``projector_pixel_shuffle``) and is loaded through :func:`llava_class`, which
builds Llava with :class:`PixelShuffleProjector` in place of its projector; nothing else changes (the
tower, the LM, the processor, the saved weights' names). With the factor 1 (the default) the checkpoint
is a plain ``LlavaForConditionalGeneration``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from thinchat.errors import ModelSpecError

#: The config attribute that holds the factor (absent or 1: Llava's own projector).
CONFIG_KEY = "projector_pixel_shuffle"


def shuffle_factor(config: Any) -> int:
    """The pixel-shuffle factor a Llava config records (1 when none)."""
    return int(getattr(config, CONFIG_KEY, 1) or 1)


def check_shuffle(grid: int, factor: int) -> None:
    """Refuse a factor that does not divide the tower's patch grid, naming the valid ones."""
    if factor < 1 or grid % factor:
        valid = [f for f in range(1, grid + 1) if grid % f == 0]
        raise ModelSpecError(
            f"pixel_shuffle={factor} does not divide the tower's {grid}x{grid} patch grid; "
            f"choose one of {valid} (or change the image size)"
        )


def pixel_shuffle(features: Any, factor: int) -> Any:
    """``(n, side*side, c)`` patch features -> ``(n, (side/f)^2, c*f^2)``, each token one ``f x f`` block
    (row-major, as Idefics3's ``pixel_shuffle`` orders them)."""
    if factor == 1:
        return features
    n, tokens, channels = features.shape
    side = math.isqrt(tokens)
    if side * side != tokens or side % factor:
        raise ModelSpecError(
            f"pixel shuffle by {factor} needs a square patch grid divisible by it, got {tokens} tokens"
        )
    out = features.reshape(n, side // factor, factor, side // factor, factor, channels)
    out = out.permute(0, 1, 3, 2, 4, 5)
    return out.reshape(n, (side // factor) ** 2, channels * factor * factor)


def _projector_base():
    from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

    return LlavaMultiModalProjector


class PixelShuffleProjector(_projector_base()):
    """Llava's linear-GELU-linear projector on pixel-shuffled tower features (``linear_1`` is ``f^2``
    times wider; the weights keep Llava's names)."""

    def __init__(self, config: Any) -> None:
        import torch

        super().__init__(config)
        self.factor = shuffle_factor(config)
        wide = self.linear_1.in_features * self.factor**2
        self.linear_1 = torch.nn.Linear(wide, self.linear_1.out_features, bias=self.linear_1.bias is not None)

    def forward(self, image_features: Any) -> Any:
        return super().forward(pixel_shuffle(image_features, self.factor))


def _shuffled_llava():
    from transformers import LlavaForConditionalGeneration

    class PixelShuffleLlava(LlavaForConditionalGeneration):
        """``LlavaForConditionalGeneration`` whose projector pixel-shuffles first (module docstring)."""

        def __init__(self, config: Any) -> None:
            super().__init__(config)
            self.model.multi_modal_projector = PixelShuffleProjector(config)

    return PixelShuffleLlava


_SHUFFLED: list[Any] = []


def llava_class(config: Any) -> Any:
    """The class a Llava config is built and loaded with: plain Llava, or Llava with pixel shuffle."""
    from transformers import LlavaForConditionalGeneration

    if shuffle_factor(config) == 1:
        return LlavaForConditionalGeneration
    if not _SHUFFLED:
        _SHUFFLED.append(_shuffled_llava())
    return _SHUFFLED[0]


def load_llava_model(path: str | Path, **kwargs: Any) -> Any:
    """``from_pretrained`` of a Llava checkpoint directory with the class its config asks for."""
    from transformers import LlavaConfig

    return llava_class(LlavaConfig.from_pretrained(path)).from_pretrained(path, **kwargs)
