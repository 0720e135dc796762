"""The eight rotations and flips of a slide (the dihedral group D4), and which one a training step uses.

Why: a thin section has no "up"; a slide turned a quarter or mirrored is the same rock. Stage 0 trains
the tower under them (``thinchat.train.tower``), and stages 1 and 2 can train the projector and the LM
under them (``rotations: true``): a ridge class probe on frozen DINOv2 features rises from 0.79 to 0.87
with each training slide's eight views as rows (bench/studies/tower_lora.py).

Which view a sample gets is drawn from the seed, the optimizer step and the slide (its first image), not
from a random stream: a resumed run draws the same views, and a slide's views (PPL, XPL) always turn
together, since they show one field.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

#: How many rotations and flips there are: k = 0..3 quarter turns, 4..7 the same then mirrored.
VIEWS = 8


def dihedral(pixels: Any, k: int) -> Any:
    """The ``k``-th (0-7) of the eight rotations and flips of the last two (spatial) dimensions."""
    import torch

    out = torch.rot90(pixels, k % 4, dims=(-2, -1))
    return out.flip(-1) if k >= 4 else out


def view_for(seed: int, step: int, slide: str) -> int:
    """The view (0-7) that ``slide`` is trained under at optimizer step ``step`` of a run seeded ``seed``."""
    digest = hashlib.sha256(f"{seed}:{step}:{slide}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % VIEWS


def batch_views(seed: int, step: int, image_paths: Sequence[str], image_counts: Sequence[int]) -> list[int]:
    """Per image of a collated batch, its view: one per sample (``view_for`` of the sample's first image).

    ``image_paths`` is the batch's flat image list, ``image_counts`` how many of them each sample has.
    """
    if sum(image_counts) != len(image_paths):
        raise ValueError(f"{len(image_paths)} image paths but image_counts {list(image_counts)}")
    views: list[int] = []
    start = 0
    for count in image_counts:
        if count:
            views += [view_for(seed, step, str(image_paths[start]))] * count
        start += count
    return views


def rotate_rows(pixel_values: Any, views: Sequence[int]) -> Any:
    """``pixel_values`` (n_images, 3, H, W) with row i turned by ``views[i]`` (square images only)."""
    import torch

    if len(views) != pixel_values.shape[0]:
        raise ValueError(f"{pixel_values.shape[0]} images but {len(views)} views")
    if not any(views):
        return pixel_values
    check_square(pixel_values)
    return torch.stack([dihedral(row, k) for row, k in zip(pixel_values, views, strict=True)])


def check_square(pixel_values: Any) -> None:
    """Refuse non-square tower inputs: a quarter turn would change their shape (and token count)."""
    from thinchat.errors import ConfigError

    height, width = pixel_values.shape[-2:]
    if height != width:
        raise ConfigError(
            f"rotations: true needs square tower inputs, but the image processor gives {height}x{width}; "
            "crop to a square (do_center_crop) or set rotations: false"
        )
