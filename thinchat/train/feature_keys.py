"""What names a cached tower feature: the tower key and an image's content key.

Why apart from the cache: the keys are the cache's correctness argument (a stale feature is never
used), and they are read on their own. The tower key hashes everything that changes the tower's
output for the same pixels: the tower config, a sha256 of every tower weight, the feature layer and
select strategy, the image processor settings, the storage dtype and, off the CPU, the compute dtype.
An image is keyed by its file bytes, its decoded pixels, or the preprocessed tensor itself; a turned or
mirrored view of it (``rotations: true``) by that key and the view's number, the unturned view by the
image key alone, as before views existed. A tile of an image (``thinchat.model.tiling``) is keyed by the
image key, the tile's number and its grid, so it differs from its image's key and from every other
tile's, of this grid or another.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from thinchat.train.embeds import tower_settings, vision_tower

if TYPE_CHECKING:
    import torch
    from PIL.Image import Image


def weight_fingerprint(module) -> str:
    """sha256 over every parameter and buffer (names, shapes, dtypes, bytes): changes when any weight does."""
    import torch

    digest = hashlib.sha256()
    params = [p for p in module.parameters() if hasattr(p, "ds_id")]
    if params:  # DeepSpeed ZeRO-3 partitions weights: gather them, or every tower would hash alike
        import deepspeed

        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            state = {k: v.clone() for k, v in module.state_dict().items()}
    else:
        state = module.state_dict()
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def image_processor_of(processor: Any) -> Any:
    """The image processor of a processor (or the image processor itself)."""
    return getattr(processor, "image_processor", processor)


def processor_settings(image_processor: Any) -> dict[str, Any]:
    """The settings that decide the pixels (size, crop, normalisation...)."""
    settings = image_processor.to_dict()
    # Bookkeeping keys that do not change the pixels.
    for key in ("processor_class", "_processor_class", "image_processor_type", "_auto_class"):
        settings.pop(key, None)
    return settings


def tower_identity(model: Any, image_processor: Any, dtype: str, compute_dtype: Any) -> dict[str, Any]:
    """Everything that changes a cached feature for the same image (see the module docstring)."""
    import torch

    layer, strategy = tower_settings(model)
    tower = vision_tower(model)
    tower_config = json.loads(tower.config.to_json_string(use_diff=False))
    for key in ("_name_or_path", "transformers_version"):  # where it was loaded from is not what it is
        tower_config.pop(key, None)
    identity = {
        "tower_config": tower_config,
        "tower_weights": weight_fingerprint(tower),
        "vision_feature_layer": layer,
        "vision_feature_select_strategy": strategy,
        "image_processor": processor_settings(image_processor) if image_processor else None,
        "dtype": dtype,
    }
    if compute_dtype != torch.float32:  # fp32 (CPU) entries keep the key they always had
        identity["compute_dtype"] = str(compute_dtype).removeprefix("torch.")
    return identity


def tower_key(identity: dict[str, Any]) -> str:
    """The cache directory name for a tower identity."""
    blob = json.dumps(identity, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


def image_key(image: Image | str | Path, memo: dict[tuple[str, int, int], str]) -> str:
    """sha256 of a file's bytes (memoised in ``memo`` by path, size and mtime) or of a PIL image's pixels."""
    if isinstance(image, (str, Path)):
        path = Path(image)
        try:
            stat = path.stat()
        except OSError as exc:
            from thinchat.errors import ImageError

            raise ImageError(
                f"{path}: image not found ({exc.strerror}); check the dataset's image paths"
            ) from exc
        entry = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        if entry not in memo:
            memo[entry] = hashlib.sha256(path.read_bytes()).hexdigest()
        return memo[entry]
    digest = hashlib.sha256(f"{image.mode}:{image.size};".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def pixel_key(pixel_values: torch.Tensor) -> str:
    """sha256 of one preprocessed image tensor: the exact tower input, so size and processor are in it."""
    import torch

    tensor = pixel_values.detach().to("cpu", torch.float32).contiguous()
    digest = hashlib.sha256(f"pixels:{tuple(tensor.shape)};".encode())
    digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def view_key(key: str, view: int) -> str:
    """The key of view ``view`` (0-7, ``thinchat.train.augment.dihedral``) of the image keyed ``key``.

    View 0 is the image as it is and keeps the image's own key: a cache filled without rotations
    serves a run with them, and the other way round.
    """
    if not 0 <= view < 8:
        raise ValueError(f"view {view}: expected 0..7")
    return key if view == 0 else f"{key}.d{view}"


def tile_key(key: str, tile: Any) -> str:
    """The key of ``tile`` (a ``thinchat.model.tiling.TileRef``) of the image keyed ``key``:
    ``<key>.t<index>-<cols>x<rows>``; a turned view of it adds ``.d<k>`` (:func:`view_key`)."""
    cols, rows = tile.grid
    return f"{key}.t{tile.index}-{cols}x{rows}"
