"""Labelled images -> caption rows: a labels file (CSV, TSV, JSONL) or one sub-folder per class.

Many collections are labels, not reports: a folder per mineral, a spreadsheet of ``id,class`` (or one 0/1
column per class), often a PPL and an XPL file per row. This module reads them into the converter's
``Row`` s (``classes`` set, caption empty), settles images listed more than once, and writes each image's
short description from its classes (``thinchat.domain.classes``); the converter then asks the grounded
questions about it as about any caption. Every input row ends up converted, merged into another row's
image (multi-label sets), or in the skip report with its file, line and reason.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from data_tools.imagecheck import VIEWS
from data_tools.sources import IMAGE_KEYS, Item, Row, Skip, _csv_records, _ref_of, json_lines
from data_tools.textfile import lines_of
from thinchat.domain.classes import ClassSet
from thinchat.domain.language import is_chinese
from thinchat.errors import DataFormatError
from thinchat.images import IMAGE_SUFFIXES, strip_view

#: Header names of the class column (one class a row, or several joined by ``;`` or ``|``).
CLASS_KEYS = ("class", "classes", "label", "labels", "category", "categories", "class_name", "label_name",
              "mineral", "rock_type", "lithology", "type")  # fmt: skip
#: Header names of a row's own slide id.
ID_KEYS = ("id", "slide_id", "slide", "sample_id", "sample", "grain_id", "grain", "name")
#: Header names of a single image column (``id`` is an id key here: it names the slide, not a file).
LABEL_IMAGE_KEYS = tuple(k for k in IMAGE_KEYS if k != "id")
#: Cell values of a 0/1 label column (one column per class, multi-label).
FLAG_VALUES = {"1": True, "true": True, "yes": True, "y": True, "x": True,
               "0": False, "false": False, "no": False, "n": False, "": False}  # fmt: skip
_SEPARATORS = re.compile(r"\s*[;|]\s*")


@dataclass(frozen=True)
class Layout:
    """Which columns of a labels table hold what (indices into a row)."""

    id: int | None
    image: int | None
    views: tuple[int, ...]  # in VIEWS order (PPL first)
    label: int | None  # the class column
    flags: tuple[tuple[int, str], ...]  # (column, class) of 0/1 label columns

    @property
    def multi_label(self) -> bool:
        return bool(self.flags)


def _view_column(name: str) -> str | None:
    """The view a column holds (``ppl``, ``ppl_image``, ``xpl_path``, ``image_xpl``), or None."""
    for view in VIEWS:
        if name == view or name in (f"{view}_image", f"image_{view}", f"{view}_path", f"{view}_file"):
            return view
    return None


def find_layout(header: Sequence[str], body: Sequence[Sequence[str]], where: str) -> Layout:
    """The layout of a labels table from its header (and, for 0/1 label columns, its values).

    Raises ``DataFormatError`` naming ``where`` (file:line of the header) when no column names a class or
    an image: every row would be skipped for the same reason.
    """
    names = [h.strip().lower() for h in header]
    col = {n: i for i, n in reversed(list(enumerate(names)))}
    views = sorted(
        (i for i, n in enumerate(names) if _view_column(n)), key=lambda i: VIEWS.index(_view_column(names[i]))
    )
    image = next((col[k] for k in LABEL_IMAGE_KEYS if k in col), None)
    ident = next((col[k] for k in ID_KEYS if k in col and col[k] != image), None)
    label = next((col[k] for k in CLASS_KEYS if k in col), None)
    flags: tuple[tuple[int, str], ...] = ()
    if label is None:
        used = {ident, image, *views, col.get("lang"), col.get("language")}
        flags = tuple(
            (i, header[i].strip())
            for i, n in enumerate(names)
            if i not in used and n and _is_flag_column([r[i] for r in body if i < len(r)])
        )
    if label is None and len(flags) < 2:
        raise DataFormatError(
            f"{where}: header {list(header)} has no class column: expected one of {', '.join(CLASS_KEYS[:6])} "
            "(several classes in a cell joined by ';'), or one 0/1 column per class"
        )
    if image is None and not views and ident is None:
        raise DataFormatError(
            f"{where}: header {list(header)} has no image column: expected id, image (or file, path) or "
            f"view columns ({', '.join(VIEWS)})"
        )
    return Layout(ident, image, tuple(views), label, flags)


def _is_flag_column(values: Sequence[str]) -> bool:
    cells = [v.strip().lower() for v in values]
    return bool(cells) and all(c in FLAG_VALUES for c in cells) and any(FLAG_VALUES[c] for c in cells)


def split_classes(cell: str) -> tuple[str, ...]:
    """The classes of one cell: ``quartz``, ``quartz; calcite`` or ``quartz|calcite``."""
    return tuple(c for c in (part.strip() for part in _SEPARATORS.split(cell)) if c)


def _table_row(path: Path, line: int, record: Sequence[str], layout: Layout) -> Item:
    """One row of a labels table as a ``Row`` (refs: the view files, else the image, else the id)."""

    def cell(index: int | None) -> str:
        return record[index].strip() if index is not None and index < len(record) else ""

    if layout.label is not None:
        classes = split_classes(cell(layout.label))
    else:
        classes = tuple(name for i, name in layout.flags if FLAG_VALUES.get(cell(i).lower(), False))
    if not classes:
        return Skip(str(path), line, "no class: the class cell is empty (or no label column is set)")
    refs = tuple(c for c in (cell(i) for i in layout.views) if c) or tuple(
        c for c in (cell(layout.image) or cell(layout.id),) if c
    )
    if not refs:
        return Skip(str(path), line, "no image: the image, view and id cells are empty")
    return Row(str(path), line, refs, "", id=cell(layout.id) or None, classes=classes)


def read_label_table(path: Path, encoding: str, delimiter: str) -> Iterator[Item]:
    """A CSV (``delimiter`` ``,``) or TSV (``\\t``) labels table with a header row."""
    decoded = list(lines_of(path, encoding))
    if delimiter == "\t":
        records = [
            (n, t.split("\t") if t is not None else None, e) for n, t, e in decoded if t is None or t.strip()
        ]
    else:
        records = [(n, r, e) for n, r, e, _ in _csv_records(decoded, width=None)]
    if not records:
        return
    first, header, reason = records[0]
    if header is None:
        raise DataFormatError(f"{path}:{first}: cannot read the header: {reason}")
    body = [r for _, r, _ in records[1:] if r is not None]
    layout = find_layout(header, body, f"{path}:{first}")
    for line, record, reason in records[1:]:
        if record is None:
            yield Skip(str(path), line, reason)
        elif not any(c.strip() for c in record):
            yield Skip(str(path), line, "row has only empty fields")
        else:
            yield _table_row(path, line, record, layout)


def _json_classes(obj: dict) -> tuple[str, ...] | None:
    key = next((k for k in obj if str(k).strip().lower() in CLASS_KEYS), None)
    value = obj.get(key) if key is not None else None
    if isinstance(value, str):
        return split_classes(value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(v.strip() for v in value if v.strip())
    return None


def _json_row(path: Path, line: int, obj: object) -> Item:
    """One JSONL labels object: ``{"id"?, "image" | "ppl"/"xpl", "class" | "labels": str or [str]}``."""
    if not isinstance(obj, dict):
        return Skip(str(path), line, "expected a JSON object")
    lowered = {str(k).strip().lower(): k for k in obj}
    classes = _json_classes(obj)
    if not classes:
        return Skip(str(path), line, f"no class: expected a {' or '.join(map(repr, CLASS_KEYS[:4]))} key")
    ident = next((_ref_of(obj[lowered[k]]) for k in ID_KEYS if k in lowered), None)
    views = [_ref_of(obj[lowered[v]]) for v in VIEWS if v in lowered]
    image_key = next((lowered[k] for k in LABEL_IMAGE_KEYS if k in lowered), None)
    image = obj.get(image_key) if image_key is not None else None
    values = image if isinstance(image, list) else ([image] if image is not None else [])
    refs = tuple(r for r in (views or [_ref_of(v) for v in values]) if r is not None)
    if len(refs) != len(views or values) or not (refs or ident):
        return Skip(str(path), line, "image must be a string or a list of strings (or give ppl/xpl or an id)")
    return Row(str(path), line, refs or (ident,), "", id=ident.strip() if ident else None, classes=classes)


def read_label_jsonl(path: Path, encoding: str) -> Iterator[Item]:
    """One JSON object a line (blank lines are not rows)."""
    for item in json_lines(path, encoding):
        yield item if isinstance(item, Skip) else _json_row(path, *item)


def read_labels(path: Path, encoding: str = "utf-8") -> Iterator[Item]:
    """The rows of a labels file, its format told from its first line (``{``: JSONL; a TAB: TSV; else CSV)."""
    if not path.is_file():
        raise DataFormatError(f"{path}: labels file not found; check --labels")
    first = next((t for _, t, _ in lines_of(path, encoding) if t is not None and t.strip()), "")
    if first.lstrip("\ufeff ").startswith("{"):
        return read_label_jsonl(path, encoding)
    return read_label_table(path, encoding, "\t" if "\t" in first else ",")


def _view_order(rel: str) -> tuple[int, str]:
    stem = rel.rsplit(".", 1)[0].lower()
    view = next(
        (i for i, v in enumerate(VIEWS) if stem.endswith(f"_{v}") or f"/{v}/" in f"/{stem}"), len(VIEWS)
    )
    return view, rel


def read_class_folders(root: Path) -> Iterator[Item]:
    """One row per slide of each class folder: ``root/<class>/`` holds its images (a slide's views as
    ``a_ppl.jpg`` + ``a_xpl.jpg`` or ``ppl/a.jpg`` + ``xpl/a.jpg``). An empty class folder, and an image
    outside any class folder, are skipped with a reason."""
    if not root.is_dir():
        raise DataFormatError(
            f"{root}: image folder not found; check --image-folder (one sub-folder per class)"
        )
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_file():
            if entry.suffix.lower() in IMAGE_SUFFIXES:
                yield Skip(
                    str(entry), None, "image outside any class folder: move it into the folder of its class"
                )
            continue
        files = sorted(
            p.relative_to(root).as_posix()
            for p in entry.rglob("*")
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
        )
        if not files:
            yield Skip(
                str(entry), None, f"class folder {entry.name!r} has no images ({', '.join(IMAGE_SUFFIXES)})"
            )
            continue
        slides: dict[str, list[str]] = {}
        for rel in files:
            inner = rel.split("/", 1)[1].rsplit(".", 1)[0]
            shared = strip_view(inner)  # a slide's views share it; a file without a view marker is its own
            slides.setdefault(shared if shared != inner else rel, []).append(rel)
        for views in slides.values():
            yield Row(str(entry), None, tuple(sorted(views, key=_view_order)), "", classes=(entry.name,))


def _digest(paths: Sequence[Path], cache: dict[Path, str]) -> str:
    """What identifies an image set by content: the same files under two names (or class folders) match."""
    for path in paths:
        if path not in cache:
            cache[path] = hashlib.sha256(path.read_bytes()).hexdigest()
    return "+".join(cache[p] for p in paths)


def _where(row: Row) -> str:
    return f"line {row.line}" if row.line is not None else row.file


def settle_duplicates(
    accepted: list[tuple[Row, tuple[Path, ...]]],
    multi_label: bool,
    skip: Callable[[str, int | None, str], None],
    merged: list[dict],
) -> list[tuple[Row, tuple[Path, ...]]]:
    """One row per image. The same image under the same classes twice: the later row is a duplicate.
    Under different classes: in a multi-label set one image with the union of the classes (the other rows
    are listed in ``merged``); in a single-label set every row of it is skipped, since the labels
    contradict each other and training on both would teach either answer."""
    groups: dict[str, list[tuple[Row, tuple[Path, ...]]]] = {}
    cache: dict[Path, str] = {}
    for row, paths in accepted:
        groups.setdefault(_digest(paths, cache), []).append((row, paths))
    kept = []
    for rows in groups.values():
        first, paths = rows[0]
        labels = {frozenset(r.classes) for r, _ in rows}
        if len(labels) > 1 and not multi_label:
            listed = ", ".join(f"{'/'.join(r.classes)} ({_where(r)})" for r, _ in rows)
            for row, _ in rows:
                skip(row.file, row.line, f"image listed under different classes in a single-label set: {listed}; "
                     "all its rows left out (fix the labels, or pass --multi-label to keep one image with both)")  # fmt: skip
            continue
        union = tuple(sorted({c for r, _ in rows for c in r.classes}))
        kept.append((replace(first, classes=union), paths))
        for row, _ in rows[1:]:
            if len(labels) == 1:
                skip(row.file, row.line, f"duplicate: same image and class as {_where(first)}")
            else:
                merged.append(
                    {"file": row.file, "line": row.line, "into": _where(first), "classes": list(union)}
                )
    return kept


def label_language(classes: Sequence[str], lang: str) -> str:
    """``lang`` when given, else zh when most class names are written in Chinese, else en."""
    if lang in ("zh", "en"):
        return lang
    return "zh" if sum(is_chinese(c) for c in classes) * 2 > len(classes) else "en"


def describe_rows(
    kept: list[tuple[Row, tuple[Path, ...]]],
    classes: ClassSet,
    lang: str,
    templates: Sequence[str],
    seed: int,
) -> list[tuple[Row, tuple[Path, ...]]]:
    """Each row with its description (naming its classes) as the caption, in ``lang``."""
    out = []
    for row, paths in kept:
        rng = random.Random(f"{seed}\0labels\0{'|'.join(row.refs)}")
        out.append(
            (replace(row, caption=classes.describe(row.classes, lang, templates, rng), lang=lang), paths)
        )
    return out
