"""Find the image files a caption row refers to, and check them fast without a full decode.

Converting tens of thousands of rows must not decode every slide at full size, yet a truncated JPEG has to
be caught before training trips on it. So JPEGs are decoded at 1/8 scale (DCT scaling: the whole entropy
stream is still read, so truncation raises), PNGs are verified (every chunk CRC), other formats go
through ``thinchat.images.load_image``; the pixel cap is checked from the header before any decoding.
Results are cached per file, since several captions often share one image.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from thinchat.errors import ImageError
from thinchat.images import (
    DEFAULT_MAX_PIXELS,
    IMAGE_SUFFIXES,
    check_file,
    check_pixels,
    image_errors,
    load_image,
)

VIEWS = ("ppl", "xpl")  # view suffixes of a two-image field: {id}_ppl.png, {id}_xpl.png (PPL first)


def check_image(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """Raise ``ImageError`` (with the reason) unless ``path`` is a readable image within the pixel cap."""
    label = str(path)
    check_file(path, label)
    with image_errors(label), Image.open(path) as img:
        check_pixels(img, label, max_pixels, hint="downscale the image or raise --max-pixels")
        if img.format == "JPEG":
            width, height = img.size
            img.draft("RGB", (max(1, width // 8), max(1, height // 8)))
            img.load()
            return
        if img.format == "PNG":
            img.verify()
            return
    load_image(path, max_pixels=max_pixels)


class ImageIndex:
    """Resolves image references (an id like ``0001`` or a relative path) inside one images directory.

    Why confined: caption files come from other people. A reference such as ``../../etc/passwd``, an
    absolute path, or a symlink in the folder would otherwise read files outside ``--images``, and the
    difference between "not found" and "not an image" would tell whether such a file exists. Every
    reference is resolved (``..`` and symlinks) and refused with one message, before anything about the
    target is looked at, unless ``allow_outside`` (``--allow-outside-images``) says otherwise.
    """

    def __init__(self, root: Path, max_pixels: int = DEFAULT_MAX_PIXELS, allow_outside: bool = False) -> None:
        if not root.is_dir():
            raise ImageError(f"{root}: images directory not found; check --images")
        self.root = root
        self.real_root = root.resolve()
        self.max_pixels = max_pixels
        self.allow_outside = allow_outside
        self._by_name: dict[str, Path] = {}
        self._outside: set[str] = set()  # names of links in the folder that point outside it
        for entry in sorted(root.iterdir()):
            if entry.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            if not self._inside(entry):
                self._outside.update((entry.stem, entry.name))
            elif entry.is_file():
                self._by_name.setdefault(entry.stem, entry)
                self._by_name.setdefault(entry.name, entry)
        self._checked: dict[Path, str] = {}
        self.used: set[Path] = set()

    def _inside(self, path: Path) -> bool:
        if self.allow_outside:
            return True
        try:
            return path.resolve().is_relative_to(self.real_root)
        except (OSError, RuntimeError, ValueError):  # symlink loop, NUL byte: not a usable reference
            return False

    def _refuse(self, ref: str) -> ImageError:
        return ImageError(
            f"image reference {ref!r} points outside the images directory {self.root} (absolute path, "
            "'..' or a symlink); only files inside --images are read (--allow-outside-images lifts this)"
        )

    def files(self) -> set[Path]:
        return set(self._by_name.values())

    def resolve(self, ref: str) -> list[Path]:
        """Paths for ``ref``: an existing relative path, ``{ref}.<image suffix>``, or its PPL/XPL views."""
        if "\x00" in ref:
            raise ImageError(f"image reference {ref!r} contains a NUL byte")
        if ref in self._by_name:
            return [self._by_name[ref]]
        if ref in self._outside:
            raise self._refuse(ref)
        direct = self.root / ref
        if not self.allow_outside and (Path(ref).is_absolute() or not self._inside(direct)):
            raise self._refuse(ref)  # decided before looking at the target: existence is not revealed
        try:
            found = direct.is_file()
        except OSError as exc:  # a name too long for the file system, a loop of links...
            shown = ref if len(ref) <= 80 else ref[:80] + "..."
            raise ImageError(
                f"image reference {shown!r} cannot be used as a file name ({exc.strerror})"
            ) from exc
        if found:
            return [direct]
        views = [self._by_name[f"{ref}_{view}"] for view in VIEWS if f"{ref}_{view}" in self._by_name]
        if views:
            return views
        raise ImageError(
            f"image not found for {ref!r}: looked for {self.root / ref}.jpg (or .png, .tif, ...) "
            f"and the views {ref}_ppl / {ref}_xpl"
        )

    def check(self, path: Path) -> str:
        """Empty string if ``path`` is a good image, else the reason (cached)."""
        if path not in self._checked:
            try:
                check_image(path, self.max_pixels)
                self._checked[path] = ""
            except ImageError as exc:
                self._checked[path] = str(exc)
        return self._checked[path]
