"""A disk cache of frozen vision-tower features, so each image goes through the tower once, ever.

Why: with the tower frozen (stage 1, and stage 2 without tower LoRA), the tower's output for an image
is a constant, yet a naive trainer recomputes it every step of every epoch. The cache stores the
projector *input* (the hidden state Llava selects, CLS dropped for the "default" strategy) so the
projector stays trainable; ``thinchat.train.embeds.merge_image_features`` finishes the job as Llava does.

Keys (``thinchat.train.feature_keys``). One safetensors file per image under
``ROOT/<tower key>/<aa>/<image sha256>.safetensors``:
- the image key is sha256 of the file bytes (paths) or of mode + size + pixels (PIL images); a turned or
  mirrored view k = 1..7 of it (``rotations: true``, ``thinchat.train.augment``) is ``<image sha256>.d<k>``,
  the tower's features of ``dihedral(pixel_values, k)``; view 0 is the image key alone, as always;
  a tile (``thinchat.model.tiling.TileRef``, a checkpoint built with ``--max-tiles``) is
  ``<image sha256>.t<index>-<cols>x<rows>``, and a turned tile adds ``.d<k>``;
- the tower key hashes the tower config, a sha256 fingerprint of every tower weight, the feature
  layer / select strategy, the image processor settings (size, crop, normalisation...) and the storage
  dtype. Change any of them and the lookup lands in a fresh directory: stale features are never used.

Where the tower runs: ``precompute`` runs it on the training device in the training precision, in
batches decoded by threads ahead of it (a GPU does ~1000 CLIP-L/336 images/s, 16 CPU cores 1.8). Under
torchrun / DeepSpeed each rank computes every ``world``-th missing image, then all meet at a barrier;
entries are content-keyed files written by rename, so no two ranks write one. CPU: fp32, in order.

Storage dtype: bfloat16 by default (under bf16 autocast the projector rounds its input to bf16 anyway;
half the disk). ``dtype="float32"`` for bit-exact fp32 training; sizes in docs/performance.md.
"""

from __future__ import annotations

import json
import logging
import os
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from thinchat.errors import ConfigError
from thinchat.model.tiling import TileRef
from thinchat.train.augment import check_square, dihedral, rotate_rows
from thinchat.train.embeds import tower_features, vision_tower
from thinchat.train.feature_keys import (
    image_key,
    image_processor_of,
    pixel_key,
    tile_key,
    tower_identity,
    tower_key,
    view_key,
)

if TYPE_CHECKING:
    import torch
    from PIL.Image import Image

log = logging.getLogger(__name__)

FEATURE_KEY = "features"
DTYPES = ("bfloat16", "float16", "float32")


@dataclass
class CacheStats:
    """Counters since the cache was created: lookups served from disk vs computed by the tower."""

    hits: int = 0
    misses: int = 0
    bytes_written: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of training processes (0, 1 outside torchrun / DeepSpeed)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier() -> None:
    """Wait for every rank (called only when ``rank_and_world`` says there are several)."""
    import torch.distributed as dist

    dist.barrier()


class FeatureCache:
    """Tower features keyed by image content + tower identity + preprocessing, stored as safetensors.

    ``model``: the Llava model being trained (bare or peft-wrapped); ``processor``: its processor (or
    image processor); ``device`` / ``compute_dtype``: where and in what precision ``precompute`` runs
    the tower. A trainable tower parameter makes every lookup raise ``ConfigError`` (stale features).
    """

    def __init__(self, root: str | Path, model: Any, processor: Any, *, dtype: str = "bfloat16",
                 batch_size: int | None = None, device: Any = None, compute_dtype: Any = None):  # fmt: skip
        import torch

        if dtype not in DTYPES:
            raise ConfigError(f"feature cache dtype '{dtype}' is not one of {', '.join(DTYPES)}")
        self.model = model
        self.image_processor = image_processor_of(processor) if processor is not None else None
        self.dtype_name = dtype
        #: Where ``precompute`` runs the tower (None: where the tower's weights are).
        self.device = torch.device(device) if device is not None else None
        on_cpu = (self.device or next(vision_tower(model).parameters()).device).type == "cpu"
        #: The tower's precision: the training dtype on an accelerator, always fp32 on CPU.
        self.compute_dtype = torch.float32 if on_cpu or compute_dtype is None else compute_dtype
        self.batch_size = batch_size or (16 if on_cpu else 64)
        self.stats = CacheStats()
        self._path_keys: dict[tuple[str, int, int], str] = {}
        tower = vision_tower(model)
        identity = tower_identity(model, self.image_processor, dtype, self.compute_dtype)
        self.tower_key = tower_key(identity)
        self.dir = Path(root).expanduser() / self.tower_key
        self.dir.mkdir(parents=True, exist_ok=True)
        info = self.dir / "cache_info.json"
        if not info.is_file():
            summary = {k: v for k, v in identity.items() if k != "tower_config"}
            summary["tower_model_type"] = tower.config.model_type
            _atomic_write_bytes(info, json.dumps(summary, indent=1, default=str).encode())

    # ----------------------------------------------------------------- keys
    def image_key(self, image: Image | str | Path | TileRef) -> str:
        """sha256 of a file's bytes (memoised by path, size and mtime) or of a PIL image's pixels; a
        tile's key is its image's with the tile's number and grid (``feature_keys.tile_key``)."""
        if isinstance(image, TileRef):
            return tile_key(image_key(image.source, self._path_keys), image)
        return image_key(image, self._path_keys)

    def path_for(self, key: str) -> Path:
        return self.dir / key[:2] / f"{key}.safetensors"

    # ------------------------------------------------------------- compute
    def check_frozen(self) -> None:
        """Refuse when the tower (or a LoRA on it) is trainable: its cached features would go stale."""
        trainable = [name for name, p in vision_tower(self.model).named_parameters() if p.requires_grad]
        if trainable:
            raise ConfigError(
                f"the vision feature cache needs a frozen vision tower, but {len(trainable)} tower parameters "
                f"are trainable (e.g. {trainable[0]}); set feature_cache: false when training the tower "
                "(tower LoRA or unfreezing), or freeze it"
            )

    def _pixels(self, images: Sequence[Image | str | Path | TileRef]) -> torch.Tensor:
        """Decode and preprocess ``images`` into the tower's ``pixel_values`` (CPU work); a tile is cut
        from its decoded image (one decode for an image and its tiles when they come in a row)."""
        from thinchat.images import load_image

        if self.image_processor is None:
            raise ValueError(
                "FeatureCache was made without a processor: use features_for_pixels(pixel_values)"
            )
        last: tuple[str, Any] = ("", None)
        pils = []
        for im in images:
            if isinstance(im, (str, Path, TileRef)):
                source = im.source if isinstance(im, TileRef) else str(im)
                if last[0] != source:
                    last = (source, load_image(source))
                pils.append(im.load(last[1]) if isinstance(im, TileRef) else last[1])
            else:
                pils.append(im.convert("RGB"))
        return self.image_processor(images=pils, return_tensors="pt")["pixel_values"]

    def _compute(self, items: list[tuple[Image | str | Path, int]]) -> list[torch.Tensor]:
        """Tower features of ``(image, view)`` items: the view's turn of the image's pixels."""
        pixel_values = self._pixels([image for image, _ in items])
        return self._tower(rotate_rows(pixel_values, [view for _, view in items]))

    def _tower(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """Tower features in ``compute_dtype``, whatever autocast the caller runs under.

        Why the caller's autocast is replaced: an entry must not depend on whether ``precompute`` or a
        training step filled it. On CPU that is fp32 (autocast off); on an accelerator the training
        dtype (bf16 autocast), which is part of the tower key.
        """
        import torch

        tower = vision_tower(self.model)
        weight = next(tower.parameters())
        low = self.compute_dtype != torch.float32
        autocast = torch.autocast(weight.device.type, dtype=self.compute_dtype, enabled=low)
        with torch.no_grad(), autocast:
            features = tower_features(self.model, pixel_values.to(weight.device, weight.dtype))
        return list(features.to("cpu", getattr(torch, self.dtype_name)))

    def _store(self, key: str, features: torch.Tensor) -> None:
        from safetensors.torch import save

        path = self.path_for(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = save({FEATURE_KEY: features.contiguous()}, metadata={"tower_key": self.tower_key})
        _atomic_write_bytes(path, data)
        self.stats.bytes_written += len(data)

    def _load(self, key: str) -> torch.Tensor | None:
        from safetensors import SafetensorError
        from safetensors.torch import load

        path = self.path_for(key)
        try:
            return load(path.read_bytes())[FEATURE_KEY]
        except FileNotFoundError:
            return None
        except (SafetensorError, KeyError) as exc:  # a torn or foreign file: recompute rather than fail
            log.warning("feature cache: %s is unreadable (%s); recomputing", path, exc)
            return None

    def _lookup(self, keys: list[str], items: list[Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Cached features by key, and the first item of each key not on disk (counted as hits / misses)."""
        found: dict[str, torch.Tensor] = {}
        todo: dict[str, Any] = {}
        for key, item in zip(keys, items, strict=True):
            if key in found or key in todo:
                continue
            cached = self._load(key)
            if cached is None:
                todo[key] = item
            else:
                found[key] = cached
        self.stats.hits += len(found)
        self.stats.misses += len(todo)
        return found, todo

    def features_for(
        self, images: Sequence[Image | str | Path], views: Sequence[int] | None = None
    ) -> torch.Tensor:
        """Tower features for ``images`` in order, shape (n_images, n_tokens, vision_hidden), stored dtype.

        ``views``: per image, which of its 8 rotations / flips (``thinchat.train.augment.dihedral``) the
        features are of; None: each image as it is (view 0). Hits are read from disk; misses go through
        the tower in batches of ``batch_size`` and are saved. Feed the result to ``merge_image_features``
        (it casts to the projector's dtype).
        """
        import torch

        self.check_frozen()
        views = [0] * len(images) if views is None else list(views)
        if len(views) != len(images):
            raise ValueError(f"features_for: {len(images)} images but {len(views)} views")
        keys = [view_key(self.image_key(im), v) for im, v in zip(images, views, strict=True)]
        found, todo = self._lookup(keys, list(zip(images, views, strict=True)))
        pending = list(todo.items())
        for start in range(0, len(pending), self.batch_size):
            chunk = pending[start : start + self.batch_size]
            for (key, _), features in zip(chunk, self._compute([item for _, item in chunk]), strict=True):
                self._store(key, features)
                found[key] = features
        if not keys:
            raise ValueError("features_for() needs at least one image")
        return torch.stack([found[key] for key in keys])

    def features_for_pixels(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Like ``features_for`` for already-preprocessed ``pixel_values`` (n_images, 3, H, W).

        Keyed by the pixel tensor itself, so it needs no processor and a different image size or
        normalisation can never hit a stale entry. Misses run the tower on these very pixels.
        """
        import torch

        self.check_frozen()
        keys = [pixel_key(row) for row in pixel_values]
        found, todo = self._lookup(keys, list(range(len(keys))))
        if todo:
            rows = torch.stack([pixel_values[i] for i in todo.values()])
            for key, features in zip(todo, self._tower(rows), strict=True):
                self._store(key, features)
                found[key] = features
        return torch.stack([found[key] for key in keys])

    def precompute(
        self, images: Sequence[str | Path], batch_size: int | None = None, views: Sequence[int] = (0,)
    ) -> CacheStats:
        """Fill the cache for ``views`` of ``images`` (skipping those already there); see the module
        docstring. Each image is decoded once for all its missing views."""
        import torch
        from tqdm import tqdm

        self.check_frozen()
        size = batch_size or self.batch_size
        unique = list(dict.fromkeys(images))
        missing: list[tuple[str | Path, list[int]]] = []
        for image in unique:
            key = self.image_key(image)
            todo = [v for v in views if not self.path_for(view_key(key, v)).is_file()]
            if todo:
                missing.append((image, todo))
        self.stats.hits += len(unique) * len(views) - sum(len(todo) for _, todo in missing)
        rank, world = rank_and_world()
        mine = missing[rank::world]
        if mine and self.device is not None:
            vision_tower(self.model).to(self.device)
        per_chunk = max(1, size // max(1, len(views)))
        chunks = [mine[start : start + per_chunk] for start in range(0, len(mine), per_chunk)]
        on_cpu = next(vision_tower(self.model).parameters()).device.type == "cpu"
        workers = 0 if on_cpu or len(chunks) < 2 else min(4, os.cpu_count() or 1)
        desc = "caching tower features" + (f" (rank {rank} of {world})" if world > 1 else "")

        def decode(chunk: list[tuple[str | Path, list[int]]]) -> torch.Tensor:
            return self._pixels([image for image, _ in chunk])

        with tqdm(total=len(mine), desc=desc, unit="img", disable=not mine) as bar:
            pixels = _prefetch(decode, chunks, workers) if workers else map(decode, chunks)
            for chunk, pixel_values in zip(chunks, pixels, strict=True):
                if any(any(todo) for _, todo in chunk):
                    check_square(pixel_values)
                keys, rows = [], []
                for (image, todo), row in zip(chunk, pixel_values, strict=True):
                    key = self.image_key(image)
                    keys += [view_key(key, v) for v in todo]
                    rows += [dihedral(row, v) if v else row for v in todo]
                for key, features in zip(keys, self._tower(torch.stack(rows)), strict=True):
                    self._store(key, features)
                self.stats.misses += len(keys)
                bar.update(len(chunk))
        if world > 1:
            barrier()  # the other ranks' shards are on disk after this
        return self.stats

    def disk_bytes(self) -> int:
        """Bytes of feature files for this tower key."""
        return sum(p.stat().st_size for p in self.dir.glob("*/*.safetensors"))


def _prefetch(fn, items: list, workers: int):
    """``map(fn, items)`` computed by ``workers`` threads at most ``2 * workers`` items ahead (bounded memory)."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending = deque(pool.submit(fn, item) for item in items[: 2 * workers])
        for index in range(2 * workers, len(items) + 2 * workers):
            result = pending.popleft().result()
            if index < len(items):
                pending.append(pool.submit(fn, items[index]))
            yield result


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary sibling then rename: a crash or full disk never leaves a torn cache file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


class CachedFeatureForward:
    """The trainer's ``feature_fn``: ``(model, input_ids, pixel_values, image_paths) -> inputs_embeds``.

    Built before the model is known (``make_feature_fn(cache_dir)``); the ``FeatureCache`` is created
    on the first call from the model the Trainer passes. Keyed by ``pixel_values`` when given, else by
    the image files.
    """

    def __init__(self, root: str | Path, processor: Any = None, dtype: str = "bfloat16") -> None:
        self.root = Path(root)
        self.processor = processor
        self.dtype = dtype
        self.cache: FeatureCache | None = None

    def __call__(self, model: Any, input_ids, pixel_values=None, image_paths: Sequence[str | Path] = ()):
        from thinchat.train.embeds import merge_image_features

        if self.cache is None:
            self.cache = FeatureCache(self.root, model, self.processor, dtype=self.dtype)
        if pixel_values is not None:
            features = self.cache.features_for_pixels(pixel_values)
        elif image_paths:
            features = self.cache.features_for(list(image_paths))
        else:
            features = None
        return merge_image_features(model, input_ids, features)


def make_feature_fn(root: str | Path, processor: Any = None, dtype: str = "bfloat16") -> CachedFeatureForward:
    """What ``thinchat.train.run`` hands the trainer when ``feature_cache: true`` and the tower is frozen."""
    return CachedFeatureForward(root, processor, dtype)
