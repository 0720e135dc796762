"""Tiles for large photographs: a slide seen whole and in a grid of crops (LLaVA-NeXT AnyRes, InternVL).

Why: users photograph slides at ~2000 x 1500 px, and every image is resized to the tower's input
(84 px in the CPU recipes), so a whole slide becomes a thumbnail and its grains are gone. With
``max_tiles`` > 1 each image is shown as a global view (the image as today) followed by ``n`` crops
of a ``cols x rows`` grid, each resized to the tower's input like any image. The crops are extra
images, so the checkpoint stays a plain transformers Llava and every multi-image path (prompts,
features, training, the feature cache) serves them unchanged; the LM pays ``(1 + n)`` times the image
tokens per image.

The grid is InternVL's ``find_closest_aspect_ratio``: among grids with ``cols * rows <= max_tiles``,
the one whose aspect ratio is closest to the image's; on a tie the grid with more tiles wins only if
the image has more than half the pixels those tiles would show at the tower's input size. A grid of
1 x 1 adds no tile (the crop would be the global view again), so an image no larger than the tower's
input gets the global view only.

A slide's PPL and XPL views must be tiled alike (same grid, same tile order), so the images of one
chat message (one slide) all take the grid decided by the *first* image of that message; another
image of the message is cut into the same ``cols x rows`` grid over its own size.

The setting is a property of the checkpoint: ``thinchat build --max-tiles N`` records it in the Llava
config (``CONFIG_KEY``, absent when off), and the engine and the training dataset read it back with
:func:`max_tiles_of`. 0 or 1 is off: prompts and images exactly as without tiles.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from thinchat.errors import ModelSpecError
from thinchat.images import check_file, image_errors

#: The Llava config attribute holding ``max_tiles`` (absent: off).
CONFIG_KEY = "thinchat_max_tiles"

Grid = tuple[int, int]
Box = tuple[int, int, int, int]


def max_tiles_of(config: Any) -> int:
    """The ``max_tiles`` a Llava config records (0 when none, or for a model without a config)."""
    return int(getattr(config, CONFIG_KEY, 0) or 0)


def check_max_tiles(max_tiles: int) -> int:
    """``max_tiles`` if valid; refuse a negative one, naming the valid values."""
    if not isinstance(max_tiles, int) or max_tiles < 0:
        raise ModelSpecError(
            f"max_tiles={max_tiles!r} is not valid: use 0 or 1 (off, one view per image) or N >= 2 "
            "(a global view plus up to N tiles per image)"
        )
    return max_tiles


def tile_grid(width: int, height: int, max_tiles: int, tile_size: int = 0) -> Grid:
    """``(cols, rows)`` of the grid an image of ``width x height`` is cut into (see module docstring).

    ``tile_size``: the tower's input side in pixels; an image no larger than it, or a tie decided
    against more tiles, gives ``(1, 1)`` (no tiles). 0: no size rule (ties go to more tiles).
    """
    if max_tiles <= 1 or width <= 0 or height <= 0:
        return (1, 1)
    if tile_size and width <= tile_size and height <= tile_size:
        return (1, 1)
    grids = sorted(
        ((c, r) for c in range(1, max_tiles + 1) for r in range(1, max_tiles + 1) if c * r <= max_tiles),
        key=lambda g: (g[0] * g[1], g[0], g[1]),
    )
    aspect = width / height
    best, best_diff = (1, 1), float("inf")
    for cols, rows in grids:
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and width * height > 0.5 * tile_size * tile_size * cols * rows:
            best = (cols, rows)
    return best


def tile_count(grid: Grid) -> int:
    """Tiles a grid adds to the global view: ``cols * rows``, none for ``1 x 1``."""
    cols, rows = grid
    return 0 if cols * rows == 1 else cols * rows


def tile_boxes(width: int, height: int, grid: Grid) -> list[Box]:
    """The crop boxes ``(left, top, right, bottom)`` of ``grid`` over an image, row-major; none for 1 x 1."""
    if tile_count(grid) == 0:
        return []
    cols, rows = grid
    xs = [round(c * width / cols) for c in range(cols + 1)]
    ys = [round(r * height / rows) for r in range(rows + 1)]
    return [(xs[c], ys[r], xs[c + 1], ys[r + 1]) for r in range(rows) for c in range(cols)]


def crop_views(image: Any, grid: Grid) -> list[Any]:
    """``[image, tile_1, ..., tile_n]`` for a PIL image cut into ``grid`` (the global view is ``image``)."""
    return [image, *(image.crop(box) for box in tile_boxes(image.width, image.height, grid))]


def tile_views(image: Any, max_tiles: int, tile_size: int = 0) -> list[Any]:
    """``[global view, tile_1, ..., tile_n]`` of one PIL image (its own grid, :func:`tile_grid`)."""
    return crop_views(image, tile_grid(image.width, image.height, max_tiles, tile_size))


def _image_counts(messages: Sequence[dict[str, Any]]) -> list[int]:
    """Image parts per message, in order."""
    return [
        0
        if isinstance(m.get("content"), str)
        else sum(1 for p in m.get("content") or () if isinstance(p, dict) and p.get("type") == "image")
        for m in messages
    ]


def slide_grids(
    messages: Sequence[dict[str, Any]], sizes: Sequence[tuple[int, int]], max_tiles: int, tile_size: int = 0
) -> list[Grid]:
    """Per image (``sizes``: ``(width, height)`` in order of the image parts), its grid: the grid of the
    first image of its message, so a slide's PPL and XPL views are cut alike. Off: ``(1, 1)`` each."""
    grids: list[Grid] = []
    for count in _image_counts(messages):
        if count:
            first = sizes[len(grids)] if len(grids) < len(sizes) else (0, 0)
            grids += [tile_grid(first[0], first[1], max_tiles, tile_size)] * count
    grids += [(1, 1)] * (len(sizes) - len(grids))  # images without parts: the caller's count check says so
    return grids


def expand_parts(messages: Sequence[dict[str, Any]], grids: Sequence[Grid]) -> list[dict[str, Any]]:
    """``messages`` with the i-th image part repeated ``1 + tile_count(grids[i])`` times, in place."""
    out: list[dict[str, Any]] = []
    index = 0
    for message in messages:
        content = message.get("content")
        if isinstance(content, str) or not content:
            out.append(message)
            continue
        parts: list[Any] = []
        for part in content:
            if isinstance(part, dict) and part.get("type") == "image" and index < len(grids):
                parts += [part] * (1 + tile_count(grids[index]))
                index += 1
            else:
                parts.append(part)
        out.append({**message, "content": parts})
    return out


@dataclass(frozen=True)
class TileRef:
    """Names one tile of an image file (training: batches carry image paths, the feature cache keys them).

    ``str()`` is a stable, readable name; the image itself is ``source`` (str path).
    """

    source: str
    index: int  # 1..n, row-major
    grid: Grid
    box: Box

    def __str__(self) -> str:
        return f"{self.source}#t{self.index}-{self.grid[0]}x{self.grid[1]}"

    def load(self, image: Any) -> Any:
        """This tile cut from ``image`` (the decoded ``source``)."""
        return image.crop(self.box)


def image_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` of an image file from its header (nothing decoded): what a grid needs."""
    from PIL import Image

    path = Path(path)
    check_file(path, str(path))
    with image_errors(str(path)), Image.open(path) as image:
        return image.size


def view_refs(source: str, size: tuple[int, int], grid: Grid) -> list[str | TileRef]:
    """``[source, TileRef 1, ..., TileRef n]``: the views of an image file, named without decoding it."""
    boxes = tile_boxes(size[0], size[1], grid)
    return [source, *(TileRef(source, k, grid, box) for k, box in enumerate(boxes, start=1))]


def expand_tiles(
    messages: Sequence[dict[str, Any]], images: Sequence[Any], max_tiles: int, tile_size: int = 0
) -> tuple[list[dict[str, Any]], list[Any]]:
    """``(messages, views)``: each image part of ``messages`` as ``1 + n`` consecutive image parts and
    ``images`` (PIL, matching the parts in order) as the matching views, global view first. Off
    (``max_tiles`` 0 or 1): the messages and images unchanged."""
    if max_tiles <= 1:
        return list(messages), list(images)
    grids = slide_grids(messages, [im.size for im in images], max_tiles, tile_size)
    views = [view for image, grid in zip(images, grids, strict=True) for view in crop_views(image, grid)]
    return expand_parts(messages, grids), views
