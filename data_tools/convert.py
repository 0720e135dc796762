"""``thinchat data convert``: image-caption pairs in any supported shape -> LLaVA conversation JSON.

One entry per caption (an image with five captions gives five entries, ids ``{id}_1`` ... ``{id}_5``,
all in the same split). Splits are drawn by image, so no image leaks between train and test. Every input
row ends up either in the output or in the skip report, with file, line and reason, and the converter
asserts rows in = rows out + rows skipped. ``strict`` turns any skip into an error.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from tqdm import tqdm

from data_tools.imagecheck import VIEWS, ImageIndex
from data_tools.sources import FORMATS, READERS, Row, Skip, check_encoding, clean_text, sniff_format
from data_tools.turns import build_exchanges, place_turns
from thinchat.domain.grounded_qa import GroundedQA, QAOptions, TermPool
from thinchat.domain.language import language_of
from thinchat.domain.lexicon import load_lexicon
from thinchat.domain.questions import load_questions
from thinchat.errors import DataFormatError, ImageError
from thinchat.images import DEFAULT_MAX_PIXELS, PAIR_SUFFIXES, slide_id

log = logging.getLogger(__name__)
SPLIT_NAMES = {1: ("train",), 2: ("train", "val"), 3: ("train", "val", "test")}


def parse_split(text: str | None) -> tuple[float, ...] | None:
    """``"0.8,0.1,0.1"`` -> ratios summing to 1 (normalised), or ``None`` for a single output file."""
    if not text:
        return None
    try:
        ratios = tuple(float(x) for x in text.split(","))
    except ValueError as exc:
        raise DataFormatError(f"--split {text!r}: expected comma-separated numbers like 0.8,0.1,0.1") from exc
    if not 1 <= len(ratios) <= 3 or any(r < 0 for r in ratios) or sum(ratios) <= 0:
        raise DataFormatError(f"--split {text!r}: expected 1 to 3 non-negative ratios (train,val,test)")
    total = sum(ratios)
    return tuple(r / total for r in ratios)


def _assign_splits(
    keys: list, ratios: tuple[float, ...] | None, seed: int | str, strata: dict | None = None
) -> dict:
    """Each key's split, drawn seeded by ``ratios``; with ``strata`` (key -> class), drawn within each
    class, so every class keeps its share in every split (a held-out set over every class)."""
    if ratios is None:
        return dict.fromkeys(keys, "all")
    if strata is None:
        order = sorted(keys)
        random.Random(seed).shuffle(order)
    else:
        order = _stratified_order(keys, seed, strata)
    names = SPLIT_NAMES[len(ratios)]
    bounds, acc = [], 0.0
    for r in ratios:
        acc += r
        bounds.append(round(acc * len(order)))
    out, start = {}, 0
    for name, end in zip(names, bounds, strict=True):
        for key in order[start:end]:
            out[key] = name
        start = end
    return out


def _stratified_order(keys: list, seed: int | str, strata: dict) -> list:
    """``keys`` shuffled within each class, then interleaved by their position within their class
    ((i + a seeded start in [0, 1)) / class size), so any stretch of the order holds each class in
    proportion: cutting it at the split ratios gives every split its share of every class (within one
    slide), and the splits the sizes an unstratified draw gives (a small class still reaches the
    validation split when the whole set does)."""
    groups: dict[str, list] = defaultdict(list)
    for key in sorted(keys):
        groups[str(strata[key])].append(key)
    ranked = []
    for stratum, members in groups.items():
        rng = random.Random(f"{seed}\0{stratum}")
        rng.shuffle(members)
        start = rng.random()
        ranked += [((i + start) / len(members), stratum, i) for i in range(len(members))]
    return [groups[stratum][i] for _, stratum, i in sorted(ranked)]


def _relative_image(path: Path, root: Path) -> str:
    """``path`` relative to the images root, ``/``-separated; a file outside it (allowed) by its name."""
    rel = Path(os.path.relpath(path, root))
    return path.name if rel.parts[:1] == ("..",) else rel.as_posix()


def _base_id(row: Row, paths: tuple[Path, ...], root: Path) -> str:
    """The id a slide's entries start with: the row's own id where it has one (an ``id`` field or column),
    else ``thinchat.images.slide_id`` of its images, as ``caption`` names rows.

    A row naming a field (``0001``) that resolved to only some of its views (``0001_ppl.png``) keeps the
    field's name, as it has when both views are there.
    """
    if row.id:
        return row.id
    rels = [_relative_image(p, root) for p in paths]
    views = {row.refs[0] + s for s in PAIR_SUFFIXES}
    if len(row.refs) == 1 and all(str(PurePosixPath(r).with_suffix("")) in views for r in rels):
        return row.refs[0].replace("/", "_")
    return slide_id(rels)


def read_ids(source: str | Path | list[str] | None) -> set[str] | None:
    """Ids from a file (one a line, ``#`` comments and blank lines ignored) or a list; None stays None."""
    if source is None:
        return None
    if isinstance(source, (list, tuple, set)):
        return {str(s).strip() for s in source if str(s).strip()}
    path = Path(source)
    if not path.is_file():
        raise DataFormatError(f"ids file not found: {path} (one slide id a line)")
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    ids = {line.split("#", 1)[0].strip() for line in lines}
    ids.discard("")
    if not ids:
        raise DataFormatError(f"{path}: no ids in the file (one slide id a line)")
    return ids


def assign_fixed_splits(
    base_ids: dict[tuple[Path, ...], str],
    test_ids: set[str] | None,
    val_ids: set[str] | None,
    ratios: tuple[float, ...] | None,
    seed: int,
    strata: dict[tuple[Path, ...], Any] | None = None,
) -> dict[tuple[Path, ...], str]:
    """Slides listed in ``test_ids`` / ``val_ids`` go there; the rest is train (or train/val by ratios,
    within each class of ``strata`` where given).

    Why strict: a test id that silently matches nothing turns a held-out report into a report on fewer
    slides than the user thinks, and an image shared across splits leaks the test set into training.
    """
    known = set(base_ids.values())
    for name, ids in (("test", test_ids), ("val", val_ids)):
        missing = sorted((ids or set()) - known)
        if missing:
            shown = ", ".join(missing[:5]) + (f" ... ({len(missing)} in all)" if len(missing) > 5 else "")
            raise DataFormatError(
                f"--{name}-ids: {shown} match no slide with a caption (known ids look like "
                f"{', '.join(sorted(known)[:3])})"
            )
    both = sorted((test_ids or set()) & (val_ids or set()))
    if both:
        raise DataFormatError(
            f"--test-ids and --val-ids both list {', '.join(both[:5])}: a slide has one split"
        )
    fixed = {paths: "test" for paths, i in base_ids.items() if test_ids and i in test_ids}
    fixed.update({paths: "val" for paths, i in base_ids.items() if val_ids and i in val_ids})
    rest = [paths for paths in base_ids if paths not in fixed]
    rest_ratios = None
    if ratios is not None and len(ratios) >= 2 and val_ids is None and sum(ratios[:2]) > 0:
        rest_ratios = (ratios[0] / sum(ratios[:2]), ratios[1] / sum(ratios[:2]))
    drawn = _assign_splits(rest, rest_ratios, seed, strata)
    split_of = {**{p: ("train" if s == "all" else s) for p, s in drawn.items()}, **fixed}
    train_files = {f.resolve() for paths, s in split_of.items() if s == "train" for f in paths}
    for paths, s in split_of.items():
        shared = [f for f in paths if s == "test" and f.resolve() in train_files]
        if shared:
            raise DataFormatError(
                f"test slide {base_ids[paths]!r} shares the image {shared[0]} with a train slide: "
                "the test set would leak into training; give each image one split"
            )
    return split_of


def _detect_lang(caption: str, forced: str, row_lang: str | None) -> str:
    if forced in ("zh", "en"):
        return forced
    if row_lang in ("zh", "en"):
        return row_lang
    return language_of(caption)


@dataclass
class _Reading:
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


def _source_items(
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


def _read_rows(items: Iterator[Any], index: ImageIndex, reading: _Reading, labelled: bool) -> None:
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


def _orphan_images(source: Path, index: ImageIndex, reading: _Reading) -> None:
    """Folder format: images nobody described are rows too, reported as skipped."""
    described = {p.stem for p in source.iterdir() if p.suffix.lower() == ".txt"}
    for orphan in sorted(index.files() - index.used):
        field = orphan.stem.rsplit("_", 1)[0] if orphan.stem.rsplit("_", 1)[-1] in VIEWS else orphan.stem
        if orphan.stem not in described and field not in described:
            reading.rows_in += 1
            reading.skip(str(orphan), None, f"no caption file {orphan.stem}.txt for this image")


def _label_set(reading: _Reading, lexicon: Any, lang: str, pools: Any, seed: int, multi_label: bool | None):
    """Settle images listed twice, then write each labelled image's description; returns the class set
    and the summary's ``labels`` section."""
    from data_tools.labels import describe_rows, label_language, settle_duplicates
    from thinchat.domain.classes import class_set

    multi = multi_label if multi_label is not None else any(len(r.classes) > 1 for r, _ in reading.accepted)
    kept = settle_duplicates(reading.accepted, multi, reading.skip, reading.merged)
    classes = class_set((c for row, _ in kept for c in row.classes), lexicon)
    code = label_language(classes.classes, lang)
    reading.accepted = describe_rows(kept, classes, code, pools.labels[code], seed)
    counts = Counter(c for row, _ in reading.accepted for c in row.classes)
    info = {
        "multi_label": multi,
        "classes": {c: counts[c] for c in classes.classes},
        "terms": {c: (None if c in classes.unmatched else t) for c, t in classes.term_of.items()},
        "merged": reading.merged,
    }
    return classes, info


def _grounded(reading: _Reading, classes: Any, lexicon: Any, pools: Any, qa_turns: int) -> Any:
    """The grounded-question generator: over the dataset's reports, or over the label set (its "no"
    terms are the other classes, never a finer term of an umbrella class)."""
    if not qa_turns:
        return None
    if classes is None:
        return GroundedQA(
            lexicon, TermPool.from_reports((r.caption for r, _ in reading.accepted), lexicon), pools
        )
    counts = Counter(classes.term_of[c] for row, _ in reading.accepted for c in row.classes)
    return GroundedQA(classes.lexicon, TermPool(counts), pools)


@dataclass
class _Built:
    """The converted entries per split, and what the summary counts about them."""

    entries: dict[str, list[dict[str, Any]]] = dataclasses.field(default_factory=lambda: defaultdict(list))
    lengths: dict[str, list[int]] = dataclasses.field(default_factory=lambda: defaultdict(list))
    turns: Counter[int] = dataclasses.field(default_factory=Counter)
    langs: Counter[str] = dataclasses.field(default_factory=Counter)
    qa: Counter[str] = dataclasses.field(default_factory=Counter)
    source_captions: dict[str, str] = dataclasses.field(default_factory=dict)


def _entry(
    row: Row, entry_id: str, paths: tuple[Path, ...], code: str, options: dict[str, Any], built: _Built
):
    """One conversation entry: the description exchange, then (``qa_turns``) the grounded ones, shuffled."""
    rng = random.Random(f"{options['seed']}\0{entry_id}")
    exchanges = build_exchanges(
        row.caption, code, rng, options["multi_turn"], options["pools"], options["lexicon"]
    )
    entry: dict[str, Any] = {"id": entry_id}
    grounded = options["grounded"]
    if grounded is not None:
        items = grounded.items(row.caption, code, rng, options["qa_options"])
        if not items:
            built.qa["reports_without_terms"] += 1
        for item in items:
            built.qa[f"{item.type}_{item.expected}" if item.type == "presence" else item.type] += 1
            exchanges.append((item.type, item.question, item.answer))
        conv, entry["turn_types"] = place_turns(exchanges, len(paths), rng)
    else:
        conv, _ = place_turns(exchanges, len(paths))
    rel = [Path(os.path.relpath(p.resolve(), options["out_dir"])).as_posix() for p in paths]
    entry.update({"image": rel, "conversations": conv, "lang": code})
    if row.classes:
        entry["labels"] = list(row.classes)
    return entry, conv


def _build_entries(
    per_image: dict[tuple[Path, ...], list[Row]],
    base_ids: dict[tuple[Path, ...], str],
    split_of: dict[tuple[Path, ...], str],
    options: dict[str, Any],
) -> _Built:
    """Every accepted row as an entry of its slide's split (ids ``{slide}`` or ``{slide}_{k}``)."""
    built = _Built()
    used_ids: set[str] = set()
    for paths, rows in per_image.items():
        base = base_ids[paths]
        for k, row in enumerate(rows, start=1):
            entry_id = base if len(rows) == 1 else f"{base}_{k}"
            if entry_id in used_ids:  # same stem in two sub-folders
                entry_id = f"{entry_id}~{len(used_ids)}"
            used_ids.add(entry_id)
            code = _detect_lang(row.caption, options["lang"], row.lang)
            entry, conv = _entry(row, entry_id, paths, code, options, built)
            if options["format_out"] == "hf":
                built.source_captions[entry_id] = row.caption
            built.entries[split_of[paths]].append(entry)
            built.lengths[code].append(len(row.caption))
            built.turns[len(conv) // 2] += 1
            built.langs[code] += 1
    return built


def _summary(fmt: str, source: Path, images_dir: Path, reading: _Reading, built: _Built) -> dict[str, Any]:
    """The summary ``convert`` returns and writes (docs/data.md, Summary and skip report)."""
    entries = built.entries
    rows_out = sum(len(v) for v in entries.values())
    merged = len(reading.merged)
    assert reading.rows_in == rows_out + len(reading.skips) + merged, (reading.rows_in, rows_out, merged)
    return {
        "format": fmt,
        "captions": str(source),
        "images": str(images_dir),
        "rows_in": reading.rows_in,
        "rows_out": rows_out,
        "rows_skipped": len(reading.skips),
        "rows_merged": merged,
        "splits": {name: len(v) for name, v in sorted(entries.items())},
        "images_per_split": {
            name: len({tuple(e["image"]) for e in v}) for name, v in sorted(entries.items())
        },
        "languages": dict(built.langs),
        "turns": {str(k): v for k, v in sorted(built.turns.items())},
        "grounded_questions": dict(sorted(built.qa.items())),
        "caption_chars": {
            code: {"min": min(v), "mean": round(statistics.fmean(v), 1), "max": max(v)}
            for code, v in built.lengths.items()
        },
        "control_characters_removed": {
            "rows": reading.controls["rows"],
            "characters": reading.controls["characters"],
        },
        "skipped": reading.skips,
        "outputs": {},
    }


def _write(summary: dict[str, Any], built: _Built, out_path: Path, format_out: str) -> None:
    """Write the entries (LLaVA JSON per split, or a DatasetDict) and record the outputs in ``summary``."""
    out_dir = out_path.parent.resolve()
    if format_out == "hf":
        from thinchat.hfdata import write_datasetdict

        named = {("train" if name == "all" else name): rows for name, rows in sorted(built.entries.items())}
        write_datasetdict(named, out_dir, out_path, built.source_captions)
        summary["outputs"] = {name: f"{out_path}/{name}" for name in named}
        return
    for name, rows in sorted(built.entries.items()):
        target = out_path if name == "all" else out_path.with_name(f"{out_path.stem}_{name}{out_path.suffix}")
        target.write_text(json.dumps(rows, ensure_ascii=False, indent=1), encoding="utf-8")
        summary["outputs"][name] = str(target)


def _slides(
    reading: _Reading,
    images_dir: Path,
    labelled: bool,
    ratios: tuple[float, ...] | None,
    seed: int,
    test_ids: str | Path | list[str] | None,
    val_ids: str | Path | list[str] | None,
) -> tuple[dict[tuple[Path, ...], list[Row]], dict[tuple[Path, ...], str], dict[tuple[Path, ...], str]]:
    """The accepted rows per slide (its image files), each slide's id, and its split (drawn within each
    class for labelled slides)."""
    per_image: dict[tuple[Path, ...], list[Row]] = defaultdict(list)
    for row, paths in reading.accepted:
        per_image[paths].append(row)
    base_ids = {paths: _base_id(rows[0], paths, images_dir) for paths, rows in per_image.items()}
    strata = {paths: rows[0].classes for paths, rows in per_image.items()} if labelled else None
    if test_ids is not None or val_ids is not None:
        split_of = assign_fixed_splits(base_ids, read_ids(test_ids), read_ids(val_ids), ratios, seed, strata)
    else:
        split_of = _assign_splits(list(per_image), ratios, seed, strata)
    return per_image, base_ids, split_of


def _check_options(fmt: str, lang: str, format_out: str, qa_turns: int, sources: int) -> None:
    if fmt not in FORMATS:
        raise DataFormatError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if lang not in ("auto", "zh", "en"):
        raise DataFormatError(f"--lang {lang!r}: expected auto, zh or en")
    if format_out not in ("json", "hf"):
        raise DataFormatError(f"--format-out {format_out!r}: expected json or hf")
    if qa_turns < 0:
        raise DataFormatError(f"--qa-turns {qa_turns}: expected 0 or more")
    if sources > 1:
        raise DataFormatError("--captions, --labels and --image-folder each name the input: pass one of them")


def convert(
    captions: str | Path | None,
    images: str | Path | None,
    out: str | Path,
    fmt: str = "auto",
    lang: str = "auto",
    multi_turn: bool = False,
    split: str | tuple[float, ...] | None = None,
    seed: int = 0,
    strict: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    encoding: str = "utf-8",
    allow_outside_images: bool = False,
    qa_turns: int = 0,
    qa_negatives: bool = True,
    lexicon_path: str | Path | None = None,
    questions_path: str | Path | None = None,
    test_ids: str | Path | list[str] | None = None,
    val_ids: str | Path | list[str] | None = None,
    format_out: str = "json",
    labels: str | Path | None = None,
    image_folder: str | Path | None = None,
    multi_label: bool | None = None,
) -> dict[str, Any]:
    """Convert captions + images to LLaVA JSON at ``out`` (or ``out``'s ``_train/_val/_test`` files).

    ``qa_turns`` > 0 adds that many grounded question-answer turns per slide (``grounded_qa``: presence
    questions half "yes" and half "no", which-of and attribute questions) and shuffles the turns; each
    entry then lists its exchanges' types in ``turn_types``. Returns the summary (also written to
    ``<out stem>.summary.json``): outputs, counts per split and language, turn counts, grounded-question
    counts, caption lengths, control characters removed, and the skip report.

    ``labels`` (a CSV/TSV/JSONL of classes per image, images under ``images``) or ``image_folder`` (one
    sub-folder per class) instead of ``captions``: each image's caption is a short description naming its
    classes (``data_tools/labels.py``), its grounded questions are about the label set, its entry lists
    its ``labels``, and the splits are drawn within each class. ``multi_label`` (None: told from the
    file) keeps an image listed under two classes as one image with both, instead of leaving it out.

    ``test_ids`` / ``val_ids`` (a file with one id a line, or a list) fix those splits: slides whose id
    (the row's own ``id`` where given, else the entry id before any ``_k`` caption number) is listed go
    there, the rest to train (with ``split``, the rest is split train/val by its first two ratios). An id
    that matches no slide, an id in both lists, or an image file shared by a test slide and a train slide
    is an error, raised before anything is written.

    ``format_out="hf"`` writes a ``datasets.DatasetDict`` folder at ``out`` instead of JSON files (images
    stored as ``Image`` features, the source caption in a ``caption`` column; thinchat.hfdata).
    """
    _check_options(
        fmt, lang, format_out, qa_turns, sum(x is not None for x in (captions, labels, image_folder))
    )
    check_encoding(encoding)
    if images is None and image_folder is None:
        raise DataFormatError(
            "no images: pass --images DIR (or --image-folder DIR, one sub-folder per class)"
        )
    images_dir = Path(image_folder if image_folder is not None else images)
    index = ImageIndex(images_dir, max_pixels, allow_outside=allow_outside_images)
    fmt, source, items = _source_items(captions, images_dir, fmt, encoding, labels, image_folder is not None)
    ratios = parse_split(split) if isinstance(split, str) or split is None else tuple(split)
    out_path = Path(out)
    lexicon = load_lexicon(Path(lexicon_path) if lexicon_path else None)
    pools = load_questions(str(questions_path) if questions_path else None)

    reading = _Reading()
    labelled = fmt in ("labels", "image-folder")
    _read_rows(items, index, reading, labelled)
    if fmt == "folder":
        _orphan_images(source, index, reading)
    classes, label_info = (
        _label_set(reading, lexicon, lang, pools, seed, multi_label) if labelled else (None, None)
    )

    per_image, base_ids, split_of = _slides(reading, images_dir, labelled, ratios, seed, test_ids, val_ids)
    options = {
        "seed": seed, "lang": lang, "multi_turn": multi_turn, "pools": pools, "lexicon": lexicon,
        "grounded": _grounded(reading, classes, lexicon, pools, qa_turns), "format_out": format_out,
        "qa_options": QAOptions.from_total(qa_turns, qa_negatives), "out_dir": out_path.parent.resolve(),
    }  # fmt: skip
    built = _build_entries(per_image, base_ids, split_of, options)
    summary = _summary(fmt, source, images_dir, reading, built)
    if label_info is not None:
        summary["labels"] = label_info
    return _finish(summary, built, out_path, format_out, strict)


def _finish(summary: dict[str, Any], built: _Built, out_path: Path, format_out: str, strict: bool) -> dict:
    """Write the outputs (unless ``strict`` and a row was skipped) and the summary; raise when nothing
    converted or ``strict`` refused."""
    summary_path = out_path.with_name(out_path.stem + ".summary.json")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    skips, rows_in = summary["skipped"], summary["rows_in"]
    if not (strict and skips) and summary["rows_out"]:
        _write(summary, built, out_path, format_out)
    summary_path.write_text(json.dumps(summary, ensure_ascii=False, indent=1), encoding="utf-8")
    summary["summary_file"] = str(summary_path)
    if strict and skips:
        first = skips[0]
        raise DataFormatError(
            f"--strict: {len(skips)} of {rows_in} rows skipped, nothing written; first: "
            f"{first['file']}:{first['line'] or '-'}: {first['reason']} (full report: {summary_path})"
        )
    if not summary["rows_out"]:
        raise DataFormatError(f"no rows converted out of {rows_in}; see the skip report in {summary_path}")
    return summary


def format_summary(summary: dict[str, Any], max_skips: int = 20) -> str:
    """Human-readable summary and skip report for the CLI."""
    lines = [
        f"rows in {summary['rows_in']} = out {summary['rows_out']} + skipped {summary['rows_skipped']}"
        + (f" + merged {summary['rows_merged']}" if summary.get("rows_merged") else ""),
        f"splits: {summary['splits']}  images: {summary['images_per_split']}",
        f"languages: {summary['languages']}  turns: {summary['turns']}",
        *(
            [f"grounded questions: {summary['grounded_questions']}"]
            if summary.get("grounded_questions")
            else []
        ),
        f"caption length (chars): {summary['caption_chars']}",
    ]
    removed = summary.get("control_characters_removed") or {}
    if removed.get("characters"):
        lines.append(
            f"control characters removed: {removed['characters']} in {removed['rows']} rows "
            "(all but newline and tab)"
        )
    labels = summary.get("labels")
    if labels:
        named = ", ".join(
            f"{c} {n}" + (f" (= {labels['terms'][c]})" if labels["terms"].get(c) not in (None, c) else "")
            for c, n in labels["classes"].items()
        )
        kind = "multi-label" if labels["multi_label"] else "single-label"
        lines.append(
            f"classes ({kind}): {named}; rows merged into another row's image: {summary['rows_merged']}"
        )
    for name, path in summary["outputs"].items():
        lines.append(f"wrote {name}: {path}")
    if summary["skipped"]:
        lines.append(f"skip report ({summary['rows_skipped']} rows):")
        for item in summary["skipped"][:max_skips]:
            lines.append(
                f"  {item['file']}:{item['line'] if item['line'] is not None else '-'}: {item['reason']}"
            )
        if len(summary["skipped"]) > max_skips:
            lines.append(f"  ... {len(summary['skipped']) - max_skips} more in {summary['summary_file']}")
    lines.append(f"summary: {summary['summary_file']}")
    return "\n".join(lines)
