"""Readers for the caption files labs keep: ThinGPT TSV, CSV, JSONL, COCO captions, a folder of .txt files.

Every reader yields one item per input row: a :class:`Row` (a caption for an image reference) or a
:class:`Skip` (the row could not be read, with file, line and reason), so the converter can keep the
invariant rows in = rows out + rows skipped. Lines are decoded one at a time, so one line in another
encoding costs that line, not the file. Blank lines are not rows.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from thinchat.errors import DataFormatError
from thinchat.images import IMAGE_SUFFIXES

FORMATS = ("auto", "tsv", "csv", "jsonl", "coco", "folder")
IMAGE_KEYS = ("image", "image_id", "id", "file_name", "filename", "file", "path", "images")
CAPTION_KEYS = ("caption", "captions", "text", "description", "sentence", "sentences", "report")


@dataclass(frozen=True)
class Row:
    file: str
    line: int | None
    refs: tuple[str, ...]  # image ids or paths (relative to --images), one per view
    caption: str
    lang: str | None = None


@dataclass(frozen=True)
class Skip:
    file: str
    line: int | None
    reason: str


Item = Row | Skip


def _lines(path: Path, encoding: str) -> Iterator[tuple[int, str | None, str]]:
    """(line number, decoded text or None, error) for each physical line of ``path``."""
    data = path.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    for number, raw in enumerate(data.split(b"\n"), start=1):
        raw = raw.rstrip(b"\r")
        try:
            yield number, raw.decode(encoding), ""
        except UnicodeDecodeError as exc:
            yield (
                number,
                None,
                (
                    f"not valid {encoding} (byte 0x{raw[exc.start]:02x} at column {exc.start + 1}); "
                    f"re-save the file as UTF-8 or pass --encoding (e.g. gb18030)"
                ),
            )


def sniff_format(path: Path) -> str:
    """Guess the format from the content (not the file name); raise ``DataFormatError`` if unclear."""
    if path.is_dir():
        return "folder"
    if not path.is_file():
        raise DataFormatError(f"{path}: captions file not found; check --captions")
    head = path.read_bytes()[:65536].decode("utf-8", errors="replace").lstrip("\ufeff \r\n\t")
    if head.startswith("{"):
        first = head.split("\n", 1)[0]
        try:
            obj = json.loads(first)
        except json.JSONDecodeError:
            return "coco"  # a multi-line JSON document
        return "coco" if isinstance(obj, dict) and "annotations" in obj else "jsonl"
    first_line = head.split("\n", 1)[0]
    if "\t" in first_line:
        return "tsv"
    header = [h.strip().lower() for h in first_line.split(",")]
    if len(header) > 1 and any(h in IMAGE_KEYS for h in header):
        return "csv"
    raise DataFormatError(
        f"{path}: cannot tell the captions format from its first line {first_line[:60]!r}; "
        f"pass --format tsv|csv|jsonl|coco|folder"
    )


def read_tsv(path: Path, encoding: str) -> Iterator[Item]:
    """ThinGPT captions: ``image_id<TAB>caption`` per line (repeated ids = several captions)."""
    for number, text, error in _lines(path, encoding):
        if text is None:
            yield Skip(str(path), number, error)
            continue
        if not text.strip():
            continue
        if "\t" not in text:
            yield Skip(str(path), number, "no TAB: expected image_id<TAB>caption")
            continue
        ref, caption = text.split("\t", 1)
        if not ref.strip():
            yield Skip(str(path), number, "empty image id before the TAB")
            continue
        yield Row(str(path), number, (ref.strip(),), caption.strip())


def _pick(mapping: dict, keys: tuple[str, ...]) -> str | None:
    lowered = {str(k).strip().lower(): k for k in mapping}
    for key in keys:
        if key in lowered:
            return lowered[key]
    return None


def read_csv(path: Path, encoding: str) -> Iterator[Item]:
    """CSV with a header naming an image column and a caption column (optional ``lang``)."""
    decoded = list(_lines(path, encoding))
    bad = {number: error for number, text, error in decoded if text is None}
    texts = [(text if text is not None else "") + "\n" for _, text, _ in decoded]
    reader = csv.reader(texts)
    try:
        header = next(reader)
    except StopIteration:
        return
    fields = {h.strip().lower(): i for i, h in enumerate(header)}
    image_col = next((fields[k] for k in IMAGE_KEYS if k in fields), None)
    caption_col = next((fields[k] for k in CAPTION_KEYS if k in fields), None)
    lang_col = fields.get("lang", fields.get("language"))
    missing = [name for name, col in (("image", image_col), ("caption", caption_col)) if col is None]
    start = reader.line_num + 1
    for record in reader:
        end = reader.line_num
        first, span = start, range(start, end + 1)
        start = end + 1
        if not any(cell.strip() for cell in record):
            continue
        errors = [bad[n] for n in span if n in bad]
        if errors:
            yield Skip(str(path), first, errors[0])
        elif missing:
            yield Skip(
                str(path), first,
                f"header {header} has no {' or '.join(missing)} column; expected columns image, caption[, lang]",
            )  # fmt: skip
        elif max(image_col, caption_col) >= len(record):
            yield Skip(str(path), first, f"row has {len(record)} fields, the header has {len(header)}")
        elif not record[image_col].strip():
            yield Skip(str(path), first, "empty image column")
        else:
            lang = record[lang_col].strip() if lang_col is not None and lang_col < len(record) else None
            yield Row(
                str(path), first, (record[image_col].strip(),), record[caption_col].strip(), lang or None
            )


def _captions_of(value: object) -> list[str] | None:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    return None


def read_jsonl(path: Path, encoding: str) -> Iterator[Item]:
    """One JSON object per line: ``{"image": id-or-path or [views], "caption": str or [str], "lang"?}``."""
    for number, text, error in _lines(path, encoding):
        if text is None:
            yield Skip(str(path), number, error)
            continue
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            yield Skip(str(path), number, f"invalid JSON ({exc.msg} at column {exc.colno})")
            continue
        image_key = _pick(obj, IMAGE_KEYS) if isinstance(obj, dict) else None
        caption_key = _pick(obj, CAPTION_KEYS) if isinstance(obj, dict) else None
        if image_key is None or caption_key is None:
            yield Skip(str(path), number, 'expected an object with "image" and "caption" keys')
            continue
        image = obj[image_key]
        refs = tuple(str(v) for v in image) if isinstance(image, list) else (str(image),)
        captions = _captions_of(obj[caption_key])
        if captions is None or not refs or not all(r.strip() for r in refs):
            yield Skip(
                str(path), number, "image must be a string or list, caption a string or list of strings"
            )
            continue
        lang = obj.get("lang") if isinstance(obj.get("lang"), str) else None
        for caption in captions:
            yield Row(str(path), number, refs, caption.strip(), lang)


def read_coco(path: Path, encoding: str) -> Iterator[Item]:
    """COCO captions JSON: ``images`` [{id, file_name}] and ``annotations`` [{image_id, caption}]."""
    try:
        data = json.loads(path.read_bytes().decode(encoding).lstrip("\ufeff"))
    except UnicodeDecodeError as exc:
        raise DataFormatError(f"{path}: not valid {encoding}; re-save as UTF-8 or pass --encoding") from exc
    except json.JSONDecodeError as exc:
        raise DataFormatError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise DataFormatError(
            f"{path}: expected a COCO captions object with 'images' and 'annotations' lists"
        )
    files: dict[str, str] = {}
    for image in data.get("images") or []:
        if isinstance(image, dict) and "id" in image and isinstance(image.get("file_name"), str):
            files[str(image["id"])] = image["file_name"]
    for index, ann in enumerate(data["annotations"]):
        where = index + 1
        if not isinstance(ann, dict) or "image_id" not in ann or not isinstance(ann.get("caption"), str):
            yield Skip(str(path), where, f"annotations[{index}]: expected image_id and a caption string")
        elif str(ann["image_id"]) not in files:
            yield Skip(
                str(path), where, f"annotations[{index}]: image_id {ann['image_id']!r} is not in 'images'"
            )
        else:
            yield Row(str(path), where, (files[str(ann["image_id"])],), ann["caption"].strip())


def read_folder(captions_dir: Path, encoding: str) -> Iterator[Item]:
    """A folder of ``{stem}.txt`` captions beside same-stem images (``{stem}_ppl``/``_xpl`` views too)."""
    for txt in sorted(p for p in captions_dir.iterdir() if p.is_file() and p.suffix.lower() == ".txt"):
        data = txt.read_bytes()
        if data.startswith(b"\xef\xbb\xbf"):
            data = data[3:]
        try:
            text = data.decode(encoding)
        except UnicodeDecodeError as exc:
            yield Skip(
                str(txt),
                None,
                f"not valid {encoding} (byte offset {exc.start}); re-save as UTF-8 or pass --encoding",
            )
            continue
        yield Row(str(txt), None, (txt.stem,), " ".join(text.split()))


def image_files(directory: Path) -> list[Path]:
    """Image files directly inside ``directory`` (by suffix), sorted."""
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


READERS = {"tsv": read_tsv, "csv": read_csv, "jsonl": read_jsonl, "coco": read_coco, "folder": read_folder}
