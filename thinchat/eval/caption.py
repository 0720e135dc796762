"""Batch captioning of a folder of slides, resumable: a rerun skips finished ids and never loses rows.

Labs caption thousands of slides overnight; a crash or a corrupt scan must not cost finished work.
Rows are appended and flushed (and fsynced) after every batch, existing rows are never rewritten, and a
bad image is reported and skipped while the rest is captioned. PPL/XPL pairs (``X_ppl.png`` +
``X_xpl.png``) can be grouped into one slide with ``pair_suffixes``.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from thinchat.errors import DataFormatError, ImageError, ThinchatError
from thinchat.images import IMAGE_SUFFIXES, load_image, slide_id

log = logging.getLogger(__name__)

DEFAULT_PROMPT = "描述这张薄片。"
TSV_HEADER = "id\timages\tcaption"
FORMATS = ("tsv", "jsonl")


@dataclass
class Slide:
    """One output row: an id and its images in prompt order; ``error`` when it cannot be captioned."""

    id: str
    paths: list[Path]
    error: str | None = None


@dataclass
class CaptionSummary:
    written: int = 0
    already_done: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)


def _image_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def discover_slides(inputs: Sequence[str | Path], pair_suffixes: Sequence[str] = ()) -> list[Slide]:
    """Slides from directories (searched recursively for image files) and/or image files, in sorted order.

    Ids are ``thinchat.images.slide_id``, the rule ``thinchat data convert`` names entries by, so captions
    and conversations join on them: the path relative to the directory (a single directory input) or as
    given, without the image suffix and with ``/`` as ``_`` (a name used twice, e.g. ``a.png`` and
    ``a.jpg``, keeps its suffix). With ``pair_suffixes`` (e.g. ``("_ppl", "_xpl")``) files whose name stem
    ends with a suffix are grouped by the stem before it into one slide named by that stem, in suffix
    order; a group missing a member is reported as failed.
    """
    files: list[tuple[str, Path]] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = _image_files(path)
            if not found:
                raise ImageError(f"{path}: no image files ({', '.join(IMAGE_SUFFIXES)}) in this directory")
            for f in found:
                rel = f.relative_to(path).as_posix()
                files.append((rel if len(inputs) == 1 else (path / rel).as_posix(), f))
        elif path.exists():
            files.append((path.as_posix(), path))
        else:
            raise ImageError(f"{path}: no such file or directory; check --images")
    if not files:
        raise ImageError("no images given; pass --images DIR or image files")
    slides: dict[str, Slide] = {}
    groups: dict[str, dict[str, tuple[str, Path]]] = {}
    stems = Counter(ident[: -len(path.suffix)] if path.suffix else ident for ident, path in files)
    for ident, path in files:
        stem_id = ident[: -len(path.suffix)] if path.suffix else ident
        suffix = next((s for s in pair_suffixes if stem_id.endswith(s)), None)
        if suffix is None:
            key = slide_id([ident]) if stems[stem_id] == 1 else ident.replace("/", "_")
            slides[key] = Slide(key, [path])
        else:
            groups.setdefault(stem_id[: -len(suffix)], {})[suffix] = (ident, path)
    for common, members in groups.items():
        missing = [s for s in pair_suffixes if s not in members]
        paths = [members[s][1] for s in pair_suffixes if s in members]
        key = slide_id([members[s][0] for s in pair_suffixes], pair_suffixes) if not missing else None
        key = key or common.replace("/", "_")
        error = (
            f"incomplete set: has {', '.join(s for s in pair_suffixes if s in members)}, missing {', '.join(missing)}"
            if missing
            else None
        )
        slides[key] = Slide(key, paths, error)
    return [slides[k] for k in sorted(slides)]


def output_format(path: str | Path, fmt: str | None = None) -> str:
    """``fmt`` if given, else from the file extension (.tsv or .jsonl)."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise ThinchatError(f"unknown output format {fmt!r}; use tsv or jsonl")
        return fmt
    ext = Path(path).suffix.lower().lstrip(".")
    if ext not in FORMATS:
        raise ThinchatError(
            f"{path}: cannot tell the output format from '.{ext}'; use .tsv/.jsonl or --format"
        )
    return ext


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def _unescape(text: str) -> str:
    out, i = [], 0
    table = {"t": "\t", "n": "\n", "r": "\r", "\\": "\\"}
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in table:
            out.append(table[text[i + 1]])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


class CaptionWriter:
    """Append-only results file: reads the ids already done, appends new rows and flushes per batch."""

    def __init__(self, path: str | Path, fmt: str | None = None) -> None:
        self.path = Path(path)
        self.fmt = output_format(self.path, fmt)
        self.done: set[str] = set()
        if self.path.exists():
            self._repair_tail()
            self._read_done()

    def _repair_tail(self) -> None:
        """Drop an unfinished last line (a crash mid-write); finished lines are never touched."""
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
            log.warning("%s: dropping an unfinished last line (%d bytes) left by an interrupted run",
                        self.path, len(data) - keep)  # fmt: skip
            with self.path.open("r+b") as fh:
                fh.truncate(keep)

    def _read_done(self) -> None:
        lines = self.path.read_text(encoding="utf-8").splitlines()
        if self.fmt == "tsv":
            if lines and lines[0] != TSV_HEADER:
                raise DataFormatError(
                    f"{self.path}:1: header is {lines[0]!r}, expected {TSV_HEADER!r}; "
                    "this is not a thinchat caption file, choose another --out"
                )
            for n, line in enumerate(lines[1:], start=2):
                cols = line.split("\t")
                if len(cols) != 3:
                    raise DataFormatError(
                        f"{self.path}:{n}: expected 3 tab-separated columns, found {len(cols)}"
                    )
                self.done.add(_unescape(cols[0]))
        else:
            for n, line in enumerate(lines, start=1):
                try:
                    row = json.loads(line)
                    self.done.add(str(row["id"]))
                except (json.JSONDecodeError, KeyError, TypeError) as exc:
                    raise DataFormatError(
                        f"{self.path}:{n}: not a caption row with an 'id' ({exc}); choose another --out"
                    ) from exc

    def write(self, rows: Sequence[dict[str, Any]]) -> None:
        """Append ``{"id", "images", "caption"}`` rows, then flush and fsync so they survive a crash."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new_file = not self.path.exists() or self.path.stat().st_size == 0
        with self.path.open("a", encoding="utf-8") as fh:
            if self.fmt == "tsv" and new_file:
                fh.write(TSV_HEADER + "\n")
            for row in rows:
                if self.fmt == "tsv":
                    images = ",".join(row["images"])
                    fh.write(f"{_escape(row['id'])}\t{_escape(images)}\t{_escape(row['caption'])}\n")
                else:
                    fh.write(json.dumps(row, ensure_ascii=False) + "\n")
                self.done.add(row["id"])
            fh.flush()
            os.fsync(fh.fileno())


def caption_slides(
    model: Any,
    processor: Any,
    slides: Sequence[Slide],
    writer: CaptionWriter,
    prompt: str = DEFAULT_PROMPT,
    batch_size: int = 8,
    max_new_tokens: int = 256,
    look_first: bool = True,
    **generate_kwargs: Any,
) -> CaptionSummary:
    """Caption every slide not yet in ``writer``; bad slides are collected in ``summary.failed``.

    ``look_first``: a ``prompt`` that is not a description question (``"Is there calcite?"``) is
    answered after the model's own description of the slide, as every interface answers it
    (:mod:`thinchat.chat.look`)."""
    from tqdm import tqdm

    from thinchat.conversation import llava_to_messages
    from thinchat.engine import ChatEngine

    engine = ChatEngine(model, processor, reuse_prefix=False)
    summary = CaptionSummary(already_done=sum(1 for s in slides if s.id in writer.done))
    todo = [s for s in slides if s.id not in writer.done]
    pending: list[tuple[Slide, list]] = []

    def flush() -> None:
        convs = [llava_to_messages([{"from": "human", "value": "<image>\n" * len(s.paths) + prompt}])
                 for s, _ in pending]  # fmt: skip
        if look_first:
            convs = engine.looked_batch(convs, [imgs for _, imgs in pending])
        captions = engine.generate_batch(
            convs, [imgs for _, imgs in pending], max_new_tokens, **generate_kwargs
        )
        writer.write(
            [{"id": s.id, "images": [p.as_posix() for p in s.paths], "caption": c}
             for (s, _), c in zip(pending, captions, strict=True)]
        )  # fmt: skip
        summary.written += len(pending)
        bar.update(len(pending))
        pending.clear()

    with tqdm(total=len(todo), desc="captioning", unit="slide") as bar:
        for slide in todo:
            try:
                if slide.error is not None:
                    raise ImageError(f"{slide.id}: {slide.error}")
                images = [load_image(p) for p in slide.paths]
            except ImageError as exc:
                log.warning("skipping %s: %s", slide.id, exc)
                summary.failed.append((slide.id, str(exc)))
                bar.update(1)
                continue
            pending.append((slide, images))
            if len(pending) >= batch_size:
                flush()
        if pending:
            flush()
    return summary
