"""Readers for the caption files labs keep: ThinGPT TSV, CSV, JSONL, COCO captions, a folder of .txt files.

Every reader yields one item per input row: a :class:`Row` (a caption for an image reference) or a
:class:`Skip` (the row could not be read, with file, line and reason), so the converter can keep the
invariant rows in = rows out + rows skipped. Lines are decoded one at a time, so one line in another
encoding costs that line, not the file (decoding: ``data_tools/textfile.py``). Blank lines are not rows.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_tools.textfile import decode_text, detect_encoding, lines_of
from thinchat.errors import DataFormatError
from thinchat.images import IMAGE_SUFFIXES

FORMATS = ("auto", "tsv", "csv", "jsonl", "coco", "folder")
IMAGE_KEYS = ("image", "image_id", "id", "file_name", "filename", "file", "path", "images")
#: The key of a row's own slide id when another key names its images.
ID_KEY = "id"
CAPTION_KEYS = ("caption", "captions", "text", "description", "sentence", "sentences", "report")


@dataclass(frozen=True)
class Row:
    file: str
    line: int | None
    refs: tuple[str, ...]  # image ids or paths (relative to --images), one per view
    caption: str
    lang: str | None = None
    #: the row's own slide id (an ``id`` field or column beside the image), used instead of one derived
    #: from the image paths: the name a user writes in ``--test-ids``
    id: str | None = None
    #: class labels of a labelled row (``data_tools/labels.py``); its caption is written from them
    classes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Skip:
    file: str
    line: int | None
    reason: str


Item = Row | Skip

#: Lines one quoted CSV field may span; a quote left open longer than this is reported, not followed to EOF.
MAX_RECORD_LINES = 100


def text_lines(path: Path, encoding: str) -> Iterator[tuple[int, str] | Skip]:
    """(line number, text) for each non-blank line of ``path``; a line that does not decode is its ``Skip``.

    Why one reader for every line-based format: each keeps the converter's invariant (rows in = rows out
    + rows skipped) the same way: a bad line costs that line, and blank lines are not rows.
    """
    for number, text, error in lines_of(path, encoding):
        if text is None:
            yield Skip(str(path), number, error)
        elif text.strip():
            yield number, text


def json_lines(path: Path, encoding: str) -> Iterator[tuple[int, Any] | Skip]:
    """(line number, parsed value) for each non-blank line of a JSONL file; a line that does not decode or
    parse is its ``Skip``, with the same reasons for captions (``read_jsonl``) and labels files."""
    for item in text_lines(path, encoding):
        if isinstance(item, Skip):
            yield item
            continue
        number, text = item
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            yield Skip(str(path), number, f"invalid JSON ({exc.msg} at column {exc.colno})")
        except RecursionError:
            yield Skip(str(path), number, "JSON nested too deeply to parse")
        else:
            yield number, obj


def sniff_format(path: Path, encoding: str = "utf-8") -> str:
    """Guess the format from the content (not the file name); raise ``DataFormatError`` if unclear."""
    if path.is_dir():
        return "folder"
    if not path.is_file():
        raise DataFormatError(f"{path}: captions file not found; check --captions")
    with path.open("rb") as handle:
        data, codec = detect_encoding(handle.read(65536), encoding)
    head = data.decode(codec, errors="replace").lstrip("\ufeff \r\n\t")
    if head.startswith("{"):
        first = head.split("\n", 1)[0]
        try:
            obj = json.loads(first)
        except json.JSONDecodeError:
            return "coco"  # a multi-line JSON document
        except RecursionError:
            return "jsonl"  # one absurdly nested line: the JSONL reader skips it with a reason
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
    for item in text_lines(path, encoding):
        if isinstance(item, Skip):
            yield item
            continue
        number, text = item
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


def _csv_error(window: list[str], consumed: int, exc: csv.Error) -> str:
    """Why the CSV record starting at ``window[0]`` cannot be parsed (decided from the text, not the message)."""
    text = window[:consumed]
    if sum(line.count('"') for line in text) % 2:
        return (
            f"unclosed quote: the quoted field that starts on this line is not closed within "
            f"{MAX_RECORD_LINES} lines or before the end of the file; close it, or write a quote "
            'inside a quoted field as ""'
        )
    limit = csv.field_size_limit()
    if sum(len(line) for line in text) > limit:
        return f"a field is longer than {limit} characters"
    hint = '; write a quote inside a quoted field as ""' if any('"' in line for line in text) else ""
    return f"malformed CSV ({exc}){hint}"


#: A line that starts like a row of its own: an image reference (no spaces or quotes) then a comma.
_ROW_START = re.compile(r'^[^\s",]+,')


def _csv_records(
    decoded: list[tuple[int, str | None, str]], width: int | None
) -> Iterator[tuple[int, list[str] | None, str, int]]:
    """``(first line, fields or None, reason, index of the next record)`` per CSV record, parsed one by one.

    Why not one ``csv.reader`` over the file: a stray quote makes it swallow every later line into one
    field (rows silently merged). Here a record is parsed strictly from its first line; a record that cannot
    be parsed, or whose quoted field runs over lines that look like rows of their own (``0003.png,...``
    with the header's number of commas), costs that one line, and parsing resumes on the next.
    """
    i = 0
    while i < len(decoded):
        number, text, error = decoded[i]
        if text is None:
            yield number, None, error, i + 1
            i += 1
            continue
        if not text.strip():
            i += 1
            continue
        window = []
        for _, line, _ in decoded[i : i + MAX_RECORD_LINES]:
            if line is None:
                break
            window.append(line + "\n")
        reader = csv.reader(window, strict=True)
        try:
            record = next(reader)
        except csv.Error as exc:
            yield number, None, _csv_error(window, reader.line_num, exc), i + 1
            i += 1
            continue
        span = reader.line_num
        merged = [
            number + k
            for k in range(1, span)
            if width is not None and _ROW_START.match(window[k]) and window[k].count(",") >= width - 1
        ]
        if merged:
            yield (
                number,
                None,
                f"unclosed quote: the quoted field on this line runs over line {merged[0]}, which looks "
                "like a row of its own; close the quote",
                i + 1,
            )
            i += 1
            continue
        yield number, record, "", i + span
        i += span


def read_csv(path: Path, encoding: str) -> Iterator[Item]:
    """CSV with a header naming an image column and a caption column (optional ``lang``; an ``id`` column
    beside the image column is the slide's own id)."""
    decoded = list(lines_of(path, encoding))
    header: list[str] | None = None
    for number, record, reason, rest in _csv_records(decoded, width=None):
        if record is None:
            raise DataFormatError(f"{path}:{number}: cannot read the CSV header: {reason}")
        header, body = record, decoded[rest:]
        break
    if header is None:
        return
    fields = {h.strip().lower(): i for i, h in enumerate(header)}
    image_col = next((fields[k] for k in IMAGE_KEYS if k in fields), None)
    caption_col = next((fields[k] for k in CAPTION_KEYS if k in fields), None)
    lang_col = fields.get("lang", fields.get("language"))
    id_col = fields.get(ID_KEY) if fields.get(ID_KEY) != image_col else None
    missing = [name for name, col in (("image", image_col), ("caption", caption_col)) if col is None]
    for first, record, reason, _ in _csv_records(body, width=len(header)):
        if record is None:
            yield Skip(str(path), first, reason)
        elif not any(cell.strip() for cell in record):
            yield Skip(str(path), first, "row has only empty fields")
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
            own = record[id_col].strip() if id_col is not None and id_col < len(record) else ""
            yield Row(
                str(path),
                first,
                (record[image_col].strip(),),
                record[caption_col].strip(),
                lang or None,
                own or None,
            )


def _captions_of(value: object) -> list[str] | None:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    return None


def _ref_of(value: object) -> str | None:
    """An image id as text: a string or an integer; anything else (nested lists, objects) is not an id."""
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def read_jsonl(path: Path, encoding: str) -> Iterator[Item]:
    """One JSON object per line: ``{"image": id-or-path or [views], "caption": str or [str], "lang"?, "id"?}``
    (an ``id`` beside ``image`` is the slide's own id)."""
    for item in json_lines(path, encoding):
        if isinstance(item, Skip):
            yield item
            continue
        number, obj = item
        image_key = _pick(obj, IMAGE_KEYS) if isinstance(obj, dict) else None
        caption_key = _pick(obj, CAPTION_KEYS) if isinstance(obj, dict) else None
        if image_key is None or caption_key is None:
            yield Skip(str(path), number, 'expected an object with "image" and "caption" keys')
            continue
        image = obj[image_key]
        values = image if isinstance(image, list) else [image]
        refs = tuple(r for r in (_ref_of(v) for v in values) if r is not None)
        captions = _captions_of(obj[caption_key])
        if captions is None or not refs or len(refs) != len(values):
            yield Skip(
                str(path), number, "image must be a string or list, caption a string or list of strings"
            )
            continue
        lang = obj.get("lang") if isinstance(obj.get("lang"), str) else None
        own = _ref_of(obj.get(ID_KEY)) if str(image_key).strip().lower() != ID_KEY else None
        for caption in captions:
            yield Row(str(path), number, refs, caption.strip(), lang, own.strip() if own else None)


def read_coco(path: Path, encoding: str) -> Iterator[Item]:
    """COCO captions JSON: ``images`` [{id, file_name}] and ``annotations`` [{image_id, caption}]."""
    text = decode_text(path, encoding)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataFormatError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from exc
    except RecursionError as exc:
        raise DataFormatError(f"{path}: JSON nested too deeply to parse; not a COCO captions file") from exc
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise DataFormatError(
            f"{path}: expected a COCO captions object with 'images' and 'annotations' lists"
        )
    files: dict[str, str] = {}
    images = data.get("images")
    for image in images if isinstance(images, list) else []:
        key = _ref_of(image.get("id")) if isinstance(image, dict) else None
        if key is not None and isinstance(image.get("file_name"), str):
            files[key] = image["file_name"]
    for index, ann in enumerate(data["annotations"]):
        where = index + 1
        key = _ref_of(ann.get("image_id")) if isinstance(ann, dict) else None
        if key is None or not isinstance(ann.get("caption"), str):
            yield Skip(str(path), where, f"annotations[{index}]: expected image_id and a caption string")
        elif key not in files:
            shown = ann["image_id"]  # a str or an int here: safe to repr
            yield Skip(str(path), where, f"annotations[{index}]: image_id {shown!r} is not in 'images'")
        else:
            yield Row(str(path), where, (files[key],), ann["caption"].strip())


def read_folder(captions_dir: Path, encoding: str) -> Iterator[Item]:
    """A folder of ``{stem}.txt`` captions beside same-stem images (``{stem}_ppl``/``_xpl`` views too)."""
    for txt in sorted(p for p in captions_dir.iterdir() if p.is_file() and p.suffix.lower() == ".txt"):
        try:
            text = decode_text(txt, encoding)
        except DataFormatError as exc:
            yield Skip(str(txt), None, str(exc).removeprefix(f"{txt}: "))
            continue
        yield Row(str(txt), None, (txt.stem,), " ".join(text.split()))


def image_files(directory: Path) -> list[Path]:
    """Image files directly inside ``directory`` (by suffix), sorted."""
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


READERS = {"tsv": read_tsv, "csv": read_csv, "jsonl": read_jsonl, "coco": read_coco, "folder": read_folder}
