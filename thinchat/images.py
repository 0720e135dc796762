"""Safe image loading shared by the data tools, training, the chat engine and the server.

Slides come from many labs and many scanners: files are missing, truncated, mislabelled or gigantic.
Loading goes through one function so every entry point rejects the same inputs with the same message,
and a decompression bomb is refused before its pixels are decoded.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any

from PIL import Image, UnidentifiedImageError

from thinchat.errors import ImageError, ImageTooLargeError, UnreadableImageError

#: Default pixel cap: a 8192 x 8192 slide scan. Larger images are refused (decompression-bomb guard).
DEFAULT_MAX_PIXELS = 8192 * 8192

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")
#: Name endings of the two views of one field (plane- and cross-polarised), in prompt order.
PAIR_SUFFIXES = ("_ppl", "_xpl")


def slide_id(images: Sequence[str], pair_suffixes: Sequence[str] = PAIR_SUFFIXES) -> str:
    """The id of a slide from its images' paths relative to the images root (POSIX, ``/``-separated).

    One rule for ``thinchat data convert`` (entry ids, ``--test-ids``) and ``thinchat caption`` (row ids),
    so captions and conversations join on it: the first image's path without its file suffix, ``/`` as
    ``_``; when the images are one slide's views, the path they share without its view folder or view
    suffix: ``sub/a_ppl.png`` + ``sub/a_xpl.png`` (any order) is ``sub_a``, and so is ``sub/ppl/a.png`` +
    ``sub/xpl/a.png``. Why: both views are one slide, and its id is the name a user writes in
    ``--test-ids``, not the first view's folder (``ppl_a``).
    """
    stems = [p[: -len(PurePosixPath(p).suffix)] if PurePosixPath(p).suffix else p for p in images]
    if not stems:
        raise ValueError("slide_id needs at least one image path")
    ident = stems[0]
    if pair_suffixes and len(stems) == len(pair_suffixes):
        first = next((s for s in pair_suffixes if stems[0].endswith(s)), None)
        common = stems[0][: -len(first)] if first else None
        if common and sorted(stems) == sorted(common + s for s in pair_suffixes):
            ident = common
    views = {s.lstrip("_").lower() for s in pair_suffixes}
    if len(stems) > 1 and views:
        shared = {strip_view(stem, views) for stem in stems}
        if len(shared) == 1 and all(strip_view(stem, views) != stem for stem in stems):
            ident = shared.pop()
    return ident.replace("/", "_")


def strip_view(stem: str, views: set[str] | frozenset[str] = frozenset({"ppl", "xpl"})) -> str:
    """``stem`` (a ``/``-separated path without its file suffix) without a folder named after a view
    (``ppl/``) and without a ``_ppl`` ending: what a slide's views have in common."""
    parts = [part for part in stem.split("/") if part.lower() not in views]
    name = parts[-1] if parts else stem
    ending = name.rsplit("_", 1)
    if len(ending) == 2 and ending[1].lower() in views and ending[0]:
        parts[-1] = ending[0]
    return "/".join(parts)


@contextmanager
def image_errors(label: str) -> Iterator[None]:
    """Turn what Pillow raises while opening or decoding into typed ``ImageError`` s naming ``label``.

    Why one mapping: the loader, the data tools' fast check and the server's header check each open
    images their own way, and must refuse the same files with the same error types.
    """
    try:
        yield
    except ImageError:
        raise
    except UnidentifiedImageError as exc:  # before OSError: it is one
        raise UnreadableImageError(f"{label}: not a readable image file (format not recognised)") from exc
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"{label}: refused as a decompression bomb ({exc})") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise UnreadableImageError(f"{label}: corrupt or truncated image ({exc})") from exc


def check_pixels(
    img: Image.Image, label: str, max_pixels: int, hint: str = "downscale the image or raise the pixel limit"
) -> None:
    """Refuse an opened image over ``max_pixels`` from its header (nothing decoded yet); ``hint`` names
    the caller's own option for the limit."""
    width, height = img.size
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"{label}: {width}x{height} = {width * height} pixels exceeds the limit of {max_pixels}; {hint}"
        )


def check_file(path: Path, label: str) -> None:
    """Refuse a missing path, a directory or an empty file before Pillow looks at it."""
    if not path.exists():
        raise ImageError(f"{label}: file not found; check the path and the --images directory")
    if path.is_dir():
        raise ImageError(f"{label}: is a directory, expected an image file")
    if path.stat().st_size == 0:
        raise ImageError(f"{label}: zero-byte file, expected an image (JPEG, PNG, TIFF...)")


def load_image(
    source: str | Path | bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, name: str | None = None
) -> Image.Image:
    """Open an image file (or raw bytes) fully decoded as RGB, or raise ``ImageError`` saying why.

    ``name`` is used in messages when ``source`` is bytes (an upload, a data URI).
    """
    label = name or (str(source) if not isinstance(source, bytes) else "<image bytes>")
    if isinstance(source, bytes):
        if not source:
            raise ImageError(f"{label}: empty image data (0 bytes)")
        stream: io.BytesIO | Path = io.BytesIO(source)
    else:
        stream = Path(source)
        check_file(stream, label)
    with image_errors(label), Image.open(stream) as img:
        check_pixels(img, label, max_pixels)
        img.load()
        return img.convert("RGB")


def image_key(image: Any) -> str:
    """Content hash of what stands for an image: a PIL image's decoded pixels (the same slide hashes the
    same whatever its file name), or a stored embedding's values (``thinchat.clipcap``)."""
    tensor = getattr(image, "tensor", None)
    if tensor is not None:
        data = tensor.detach().to("cpu").contiguous()
        digest = hashlib.sha256(f"embedding:{tuple(data.shape)}:{data.dtype}:".encode())
        digest.update(data.reshape(-1).float().numpy().tobytes())
        return digest.hexdigest()
    digest = hashlib.sha256(f"{image.mode}:{image.size[0]}x{image.size[1]}:".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()
