"""``thinchat data convert``: image-caption pairs in any supported shape -> LLaVA conversation JSON.

One entry per caption (an image with five captions gives five entries, ids ``{id}_1`` ... ``{id}_5``,
all in the same split). Splits are drawn by image, so no image leaks between train and test. Every input
row ends up either in the output or in the skip report, with file, line and reason, and the converter
asserts rows in = rows out + rows skipped. ``strict`` turns any skip into an error.

The steps live in their own modules: ``convert_rows`` (reading and checking the rows), ``splits``
(drawing or fixing the splits), ``convert_entries`` (slides and their conversation entries) and
``convert_output`` (summary, files written, the CLI's report); this module runs them in order.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from data_tools.convert_entries import build_entries, follow_up_generator, label_set, slides
from data_tools.convert_output import finish, format_summary, summarise
from data_tools.convert_rows import Reading, orphan_images, read_rows, source_items
from data_tools.imagecheck import ImageIndex
from data_tools.sources import FORMATS
from data_tools.splits import SPLIT_NAMES, assign_fixed_splits, parse_split, read_ids
from data_tools.textfile import check_encoding
from thinchat.domain.grounded_qa import QAOptions
from thinchat.domain.lexicon import load_lexicon
from thinchat.domain.questions import load_questions
from thinchat.errors import DataFormatError
from thinchat.images import DEFAULT_MAX_PIXELS

__all__ = ["SPLIT_NAMES", "assign_fixed_splits", "convert", "format_summary", "parse_split", "read_ids"]


def _check_options(
    fmt: str, lang: str, format_out: str, qa_turns: int, sources: int, describe_first: float
) -> None:
    if fmt not in FORMATS:
        raise DataFormatError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if lang not in ("auto", "zh", "en"):
        raise DataFormatError(f"--lang {lang!r}: expected auto, zh or en")
    if format_out not in ("json", "hf"):
        raise DataFormatError(f"--format-out {format_out!r}: expected json or hf")
    if qa_turns < 0:
        raise DataFormatError(f"--qa-turns {qa_turns}: expected 0 or more")
    if not 0.0 <= describe_first <= 1.0:
        raise DataFormatError(f"--describe-first {describe_first}: expected a share from 0 to 1")
    if sources > 1:
        raise DataFormatError("--captions, --labels and --image-folder each name the input: pass one of them")


def _open_input(
    captions: str | Path | None,
    images: str | Path | None,
    image_folder: str | Path | None,
    labels: str | Path | None,
    fmt: str,
    encoding: str,
    max_pixels: int,
    allow_outside_images: bool,
) -> tuple[str, Path, Iterator[Any], Path, ImageIndex]:
    """``(format, source, rows, images dir, image index)`` for the one input given; raises before any row
    is read when there are no images or the caption file is missing."""
    if images is None and image_folder is None:
        raise DataFormatError(
            "no images: pass --images DIR (or --image-folder DIR, one sub-folder per class)"
        )
    images_dir = Path(image_folder if image_folder is not None else images)
    index = ImageIndex(images_dir, max_pixels, allow_outside=allow_outside_images)
    fmt, source, items = source_items(captions, images_dir, fmt, encoding, labels, image_folder is not None)
    return fmt, source, items, images_dir, index


def _read(
    fmt: str, source: Path, items: Iterator[Any], index: ImageIndex, label_args: tuple
) -> tuple[Reading, bool, Any, dict[str, Any] | None]:
    """Every row read and checked (images nobody described counted too, in folder format); labelled rows
    settled and described. Returns the reading, whether the input is labelled, the class set and the
    summary's ``labels`` section (both None for captions)."""
    reading = Reading()
    labelled = fmt in ("labels", "image-folder")
    read_rows(items, index, reading, labelled)
    if fmt == "folder":
        orphan_images(source, index, reading)
    classes, label_info = label_set(reading, *label_args) if labelled else (None, None)
    return reading, labelled, classes, label_info


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
    describe_first: float = 0.0,
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

    ``multi_turn`` adds a follow-up turn per report facet after the description; ``qa_turns`` > 0 adds
    that many grounded question-answer turns per slide (presence questions half "yes" and half "no",
    which-of and attribute questions) and shuffles the turns; each entry then lists its exchanges' types in
    ``turn_types``. Both kinds come from one generator (``thinchat.domain.grounded_qa.GroundedQA``). Returns the summary (also written to
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
        fmt,
        lang,
        format_out,
        qa_turns,
        sum(x is not None for x in (captions, labels, image_folder)),
        describe_first,
    )
    check_encoding(encoding)
    fmt, source, items, images_dir, index = _open_input(
        captions, images, image_folder, labels, fmt, encoding, max_pixels, allow_outside_images
    )
    ratios = parse_split(split) if isinstance(split, str) or split is None else tuple(split)
    out_path = Path(out)
    lexicon = load_lexicon(Path(lexicon_path) if lexicon_path else None)
    pools = load_questions(str(questions_path) if questions_path else None)

    reading, labelled, classes, label_info = _read(
        fmt, source, items, index, (lexicon, lang, pools, seed, multi_label)
    )
    per_image, base_ids, split_of = slides(reading, images_dir, labelled, ratios, seed, test_ids, val_ids)
    qa_options = QAOptions.from_total(qa_turns, qa_negatives, facets=multi_turn)
    options = {
        "seed": seed, "lang": lang, "pools": pools, "qa_options": qa_options, "format_out": format_out,
        "describe_first": describe_first,
        "follow_ups": follow_up_generator(reading, classes, lexicon, pools, qa_options),
        "out_dir": out_path.parent.resolve(),
    }  # fmt: skip
    built = build_entries(per_image, base_ids, split_of, options)
    summary = summarise(fmt, source, images_dir, reading, built)
    if label_info is not None:
        summary["labels"] = label_info
    return finish(summary, built, out_path, format_out, strict)
