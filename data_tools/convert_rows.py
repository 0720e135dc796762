"""Reading the input of ``thinchat data convert``: the rows of a caption file, a labels file or class
folders, each checked (caption, image references, the images themselves) into accepted or skipped rows.

Every input row ends up accepted, skipped (with file, line and reason) or, for labelled images listed
twice, merged; ``convert`` asserts the counts add up.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from data_tools.imagecheck import VIEWS, ImageIndex
from data_tools.sources import READERS, Row, Skip, sniff_format
from data_tools.textfile import clean_text
from thinchat.errors import DataFormatError, ImageError


@dataclass
class Reading:
    """What reading the input gave: rows accepted (with their image files), skipped and merged, and the
    control characters removed from captions, class names and ids."""

    rows_in: int = 0
    accepted: list[tuple[Row, tuple[Path, ...]]] = dataclasses.field(default_factory=list)
    skips: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    merged: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    controls: Counter[str] = dataclasses.field(default_factory=Counter)

    def skip(self, file: str, line: int | None, reason: str) -> None:
        self.skips.append({"file": file, "line": line, "reason": reason})

    def clean(self, row: Row) -> Row:
        """``row`` without control characters other than newline and tab in its caption, classes and id."""
        caption, removed = clean_text(row.caption)
        classes = [clean_text(c) for c in row.classes]
        ident, in_id = clean_text(row.id) if row.id else (row.id, 0)
        total = removed + sum(n for _, n in classes) + in_id
        if not total:
            return row
        self.controls["rows"] += 1
        self.controls["characters"] += total
        kept = tuple(c.strip() for c, _ in classes if c.strip())
        return dataclasses.replace(
            row, caption=caption.strip(), classes=kept, id=(ident or "").strip() or None
        )


def source_items(
    captions: str | Path | None,
    images_dir: Path,
    fmt: str,
    encoding: str,
    labels: str | Path | None,
    image_folder: bool,
) -> tuple[str, Path, Iterator[Any]]:
    """``(format, source, items)``: the rows of the caption file, the labels file or the class folders."""
    from data_tools.labels import read_class_folders, read_labels

    if image_folder:
        return "image-folder", images_dir, read_class_folders(images_dir)
    if labels is not None:
        return "labels", Path(labels), read_labels(Path(labels), encoding)
    source = Path(captions) if captions is not None else images_dir
    fmt = sniff_format(source, encoding) if fmt == "auto" else fmt
    if fmt == "folder" and not source.is_dir():
        raise DataFormatError(f"{source}: --format folder expects a directory of .txt captions")
    if fmt != "folder" and not source.is_file():
        raise DataFormatError(f"{source}: captions file not found; check --captions")
    return fmt, source, READERS[fmt](source, encoding)


def read_rows(items: Iterator[Any], index: ImageIndex, reading: Reading, labelled: bool) -> None:
    """Check every row (caption, image references, the images themselves) into ``reading``.

    Caption rows with the same image and caption are duplicates here; labelled rows are settled after
    (``data_tools.labels.settle_duplicates``), since the same image under two classes is a decision."""
    seen: dict[tuple[tuple[Path, ...], str], int | None] = {}
    for item in tqdm(items, desc="convert", unit="row"):
        reading.rows_in += 1
        if isinstance(item, Skip):
            reading.skip(item.file, item.line, item.reason)
            continue
        item = reading.clean(item)
        if not item.caption and not labelled:
            reading.skip(item.file, item.line, "empty caption")
            continue
        if labelled and not item.classes:
            reading.skip(item.file, item.line, "no class left once control characters were removed")
            continue
        if "<image>" in item.caption:
            reading.skip(
                item.file, item.line, "caption contains the <image> placeholder; remove it from the text"
            )
            continue
        try:
            paths = tuple(p for ref in item.refs for p in index.resolve(ref))
        except ImageError as exc:
            reading.skip(item.file, item.line, str(exc))
            continue
        index.used.update(paths)
        reasons = [r for r in (index.check(p) for p in paths) if r]
        if reasons:
            reading.skip(item.file, item.line, reasons[0])
            continue
        key = (paths, item.caption)
        if key in seen and not labelled:
            where = f"line {seen[key]}" if seen[key] is not None else "an earlier row"
            reading.skip(item.file, item.line, f"duplicate: same image and caption as {where}")
            continue
        seen[key] = item.line
        reading.accepted.append((item, paths))


def orphan_images(source: Path, index: ImageIndex, reading: Reading) -> None:
    """Folder format: images nobody described are rows too, reported as skipped."""
    described = {p.stem for p in source.iterdir() if p.suffix.lower() == ".txt"}
    for orphan in sorted(index.files() - index.used):
        field = orphan.stem.rsplit("_", 1)[0] if orphan.stem.rsplit("_", 1)[-1] in VIEWS else orphan.stem
        if orphan.stem not in described and field not in described:
            reading.rows_in += 1
            reading.skip(str(orphan), None, f"no caption file {orphan.stem}.txt for this image")
