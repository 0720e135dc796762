"""Decoding the text files users bring: byte-order marks, the encoding they name, lines split at code-unit
boundaries and decoded one at a time, and control characters cleaned out of captions.

Why apart from the readers: every reader (``data_tools/sources.py``, ``data_tools/labels.py``) decodes
the same way, so one line in another encoding costs that line, not the file, whatever the format.
"""

from __future__ import annotations

import codecs
import unicodedata
from collections.abc import Iterator
from pathlib import Path

from thinchat.errors import DataFormatError

#: Control characters a caption may keep: the rest (NUL, escape, ...) are removed by ``clean_text``.
KEPT_CONTROLS = frozenset("\n\t")

#: Byte-order marks and the codec each one means; a BOM wins over ``--encoding`` (UTF-32 before UTF-16:
#: the UTF-32-LE mark starts with the UTF-16-LE one).
_BOMS = (
    (b"\xef\xbb\xbf", "utf-8"),
    (b"\xff\xfe\x00\x00", "utf-32-le"),
    (b"\x00\x00\xfe\xff", "utf-32-be"),
    (b"\xff\xfe", "utf-16-le"),
    (b"\xfe\xff", "utf-16-be"),
)
#: Codecs whose name leaves the byte order open: without a BOM, read them little-endian (what Windows writes).
_NO_BOM_DEFAULT = {"utf-16": "utf-16-le", "utf-32": "utf-32-le", "utf-8-sig": "utf-8"}


def check_encoding(encoding: str) -> str:
    """The canonical codec name of ``encoding``, or ``DataFormatError`` (not a bare ``LookupError``)."""
    try:
        return codecs.lookup(encoding).name
    except LookupError as exc:
        raise DataFormatError(
            f"--encoding {encoding!r}: unknown text encoding; use a codec name such as utf-8, gb18030 or utf-16"
        ) from exc


def clean_text(text: str) -> tuple[str, int]:
    """``text`` without control characters other than newline and tab, and how many were removed.

    Why: a NUL or an escape sequence inside a caption (pasted from a terminal, exported by a database)
    would travel into the conversation JSON and the tokenizer; the converter counts what it removed.
    """
    removed = sum(1 for ch in text if unicodedata.category(ch) == "Cc" and ch not in KEPT_CONTROLS)
    if not removed:
        return text, 0
    return "".join(ch for ch in text if unicodedata.category(ch) != "Cc" or ch in KEPT_CONTROLS), removed


def detect_encoding(data: bytes, encoding: str) -> tuple[bytes, str]:
    """``(data without its BOM, codec)``: a UTF-8/16/32 BOM decides, otherwise ``encoding`` does.

    Why: spreadsheet software writes "Unicode Text" as UTF-16 with a BOM and CSV as UTF-8 with one; users
    should not have to know which.
    """
    for bom, codec in _BOMS:
        if data.startswith(bom):
            return data[len(bom) :], codec
    name = check_encoding(encoding)
    return data, _NO_BOM_DEFAULT.get(name, name)


def _split_lines(data: bytes, codec: str) -> Iterator[bytes]:
    """Physical lines of ``data`` in ``codec``, split on the encoded newline at code-unit boundaries.

    Why not ``data.split(b"\n")``: in UTF-16/32 the newline is 2 or 4 bytes and a 0x0a byte can sit inside
    another character; splitting on bytes would tear every line after the first.
    """
    newline, carriage = "\n".encode(codec), "\r".encode(codec)
    width = len(newline)
    start, pos = 0, data.find(newline)
    while pos != -1:
        if pos % width:  # not on a code-unit boundary: part of another character
            pos = data.find(newline, pos + 1)
            continue
        line = data[start:pos]
        yield line[: -len(carriage)] if line.endswith(carriage) else line
        start = pos + width
        pos = data.find(newline, start)
    line = data[start:]
    yield line[: -len(carriage)] if line.endswith(carriage) else line


def lines_of(path: Path, encoding: str) -> Iterator[tuple[int, str | None, str]]:
    """(line number, decoded text or None, error) for each physical line of ``path``."""
    data, codec = detect_encoding(path.read_bytes(), encoding)
    for number, raw in enumerate(_split_lines(data, codec), start=1):
        try:
            yield number, raw.decode(codec), ""
        except UnicodeDecodeError as exc:
            byte = f"byte 0x{raw[exc.start]:02x}" if exc.start < len(raw) else "an incomplete character"
            yield (
                number,
                None,
                f"not valid {codec} ({byte} at column {exc.start + 1}); "
                f"re-save the file as UTF-8 or pass --encoding (e.g. gb18030)",
            )


def decode_text(path: Path, encoding: str) -> str:
    """The whole of ``path`` decoded (BOM detected), or ``DataFormatError`` naming the file and offset."""
    data, codec = detect_encoding(path.read_bytes(), encoding)
    try:
        return data.decode(codec)
    except UnicodeDecodeError as exc:
        raise DataFormatError(
            f"{path}: not valid {codec} (byte offset {exc.start}); re-save as UTF-8 or pass --encoding"
        ) from exc
