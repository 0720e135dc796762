"""``thinchat data convert``: image-caption pairs in any supported shape -> LLaVA conversation JSON.

One entry per caption (an image with five captions gives five entries, ids ``{id}_1`` ... ``{id}_5``,
all in the same split). Splits are drawn by image, so no image leaks between train and test. Every input
row ends up either in the output or in the skip report, with file, line and reason, and the converter
asserts rows in = rows out + rows skipped. ``strict`` turns any skip into an error.
"""

from __future__ import annotations

import json
import logging
import os
import random
import statistics
from collections import Counter, defaultdict
from pathlib import Path, PurePosixPath
from typing import Any

from tqdm import tqdm

from data_tools.imagecheck import VIEWS, ImageIndex
from data_tools.sources import FORMATS, READERS, Row, Skip, check_encoding, sniff_format
from data_tools.turns import build_exchanges, place_turns
from thinchat.domain.grounded_qa import GroundedQA, QAOptions, TermPool
from thinchat.domain.lexicon import is_chinese, load_lexicon
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


def _assign_splits(keys: list[tuple[str, ...]], ratios: tuple[float, ...] | None, seed: int) -> dict:
    if ratios is None:
        return dict.fromkeys(keys, "all")
    order = sorted(keys)
    random.Random(seed).shuffle(order)
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


def _relative_image(path: Path, root: Path) -> str:
    """``path`` relative to the images root, ``/``-separated; a file outside it (allowed) by its name."""
    rel = Path(os.path.relpath(path, root))
    return path.name if rel.parts[:1] == ("..",) else rel.as_posix()


def _base_id(row: Row, paths: tuple[Path, ...], root: Path) -> str:
    """The id a slide's entries start with: ``thinchat.images.slide_id`` of its images, as ``caption`` names rows.

    A row naming a field (``0001``) that resolved to only some of its views (``0001_ppl.png``) keeps the
    field's name, as it has when both views are there.
    """
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
) -> dict[tuple[Path, ...], str]:
    """Slides listed in ``test_ids`` / ``val_ids`` go there; the rest is train (or train/val by ratios).

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
    drawn = _assign_splits(rest, rest_ratios, seed)
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
    return "zh" if is_chinese(caption) else "en"


def convert(
    captions: str | Path | None,
    images: str | Path,
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
) -> dict[str, Any]:
    """Convert captions + images to LLaVA JSON at ``out`` (or ``out``'s ``_train/_val/_test`` files).

    ``qa_turns`` > 0 adds that many grounded question-answer turns per slide (``grounded_qa``: presence
    questions half "yes" and half "no", which-of and attribute questions) and shuffles the turns; each
    entry then lists its exchanges' types in ``turn_types``. Returns the summary (also written to
    ``<out stem>.summary.json``): outputs, counts per split and language, turn counts, grounded-question
    counts, caption lengths, and the skip report.

    ``test_ids`` / ``val_ids`` (a file with one id a line, or a list) fix those splits: slides whose id
    (the entry id before any ``_k`` caption number) is listed go there, the rest to train (with ``split``,
    the rest is split train/val by its first two ratios). An id that matches no slide, an id in both lists,
    or an image file shared by a test slide and a train slide is an error, raised before anything is written.

    ``format_out="hf"`` writes a ``datasets.DatasetDict`` folder at ``out`` instead of JSON files (images
    stored as ``Image`` features, the source caption in a ``caption`` column; thinchat.hfdata).
    """
    if fmt not in FORMATS:
        raise DataFormatError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if lang not in ("auto", "zh", "en"):
        raise DataFormatError(f"--lang {lang!r}: expected auto, zh or en")
    images_dir = Path(images)
    source = Path(captions) if captions is not None else images_dir
    check_encoding(encoding)
    fmt = sniff_format(source, encoding) if fmt == "auto" else fmt
    if fmt == "folder" and not source.is_dir():
        raise DataFormatError(f"{source}: --format folder expects a directory of .txt captions")
    if fmt != "folder" and not source.is_file():
        raise DataFormatError(f"{source}: captions file not found; check --captions")
    ratios = parse_split(split) if isinstance(split, str) or split is None else tuple(split)
    index = ImageIndex(images_dir, max_pixels, allow_outside=allow_outside_images)
    out_path = Path(out)
    out_dir = out_path.parent.resolve()
    if format_out not in ("json", "hf"):
        raise DataFormatError(f"--format-out {format_out!r}: expected json or hf")
    if qa_turns < 0:
        raise DataFormatError(f"--qa-turns {qa_turns}: expected 0 or more")
    lexicon = load_lexicon(Path(lexicon_path) if lexicon_path else None)
    pools = load_questions(str(questions_path) if questions_path else None)

    skips: list[dict[str, Any]] = []
    accepted: list[tuple[Row, tuple[Path, ...]]] = []
    seen: dict[tuple[tuple[Path, ...], str], int | None] = {}
    rows_in = 0

    def skip(file: str, line: int | None, reason: str) -> None:
        skips.append({"file": file, "line": line, "reason": reason})

    for item in tqdm(READERS[fmt](source, encoding), desc="convert", unit="row"):
        rows_in += 1
        if isinstance(item, Skip):
            skip(item.file, item.line, item.reason)
            continue
        if not item.caption:
            skip(item.file, item.line, "empty caption")
            continue
        if "<image>" in item.caption:
            skip(item.file, item.line, "caption contains the <image> placeholder; remove it from the text")
            continue
        try:
            paths = tuple(p for ref in item.refs for p in index.resolve(ref))
        except ImageError as exc:
            skip(item.file, item.line, str(exc))
            continue
        index.used.update(paths)
        reasons = [r for r in (index.check(p) for p in paths) if r]
        if reasons:
            skip(item.file, item.line, reasons[0])
            continue
        key = (paths, item.caption)
        if key in seen:
            where = f"line {seen[key]}" if seen[key] is not None else "an earlier row"
            skip(item.file, item.line, f"duplicate: same image and caption as {where}")
            continue
        seen[key] = item.line
        accepted.append((item, paths))

    if fmt == "folder":  # images nobody described are rows too: report them
        described = {p.stem for p in source.iterdir() if p.suffix.lower() == ".txt"}
        for orphan in sorted(index.files() - index.used):
            field = orphan.stem.rsplit("_", 1)[0] if orphan.stem.rsplit("_", 1)[-1] in VIEWS else orphan.stem
            if orphan.stem not in described and field not in described:
                rows_in += 1
                skip(str(orphan), None, f"no caption file {orphan.stem}.txt for this image")

    per_image: dict[tuple[Path, ...], list[Row]] = defaultdict(list)
    for row, paths in accepted:
        per_image[paths].append(row)
    base_ids = {paths: _base_id(rows[0], paths, images_dir) for paths, rows in per_image.items()}
    if test_ids is not None or val_ids is not None:
        split_of = assign_fixed_splits(base_ids, read_ids(test_ids), read_ids(val_ids), ratios, seed)
    else:
        split_of = _assign_splits(list(per_image), ratios, seed)
    qa_options = QAOptions.from_total(qa_turns, qa_negatives)
    grounded = (
        GroundedQA(lexicon, TermPool.from_reports((r.caption for r, _ in accepted), lexicon), pools)
        if qa_turns
        else None
    )
    qa_count: Counter[str] = Counter()
    entries: dict[str, list[dict[str, Any]]] = defaultdict(list)
    lengths: dict[str, list[int]] = defaultdict(list)
    turns_count: Counter[int] = Counter()
    lang_count: Counter[str] = Counter()
    used_ids: set[str] = set()
    source_captions: dict[str, str] = {}
    for paths, rows in per_image.items():
        base = base_ids[paths]
        for k, row in enumerate(rows, start=1):
            entry_id = base if len(rows) == 1 else f"{base}_{k}"
            if entry_id in used_ids:  # same stem in two sub-folders
                entry_id = f"{entry_id}~{len(used_ids)}"
            used_ids.add(entry_id)
            code = _detect_lang(row.caption, lang, row.lang)
            rng = random.Random(f"{seed}\0{entry_id}")
            exchanges = build_exchanges(row.caption, code, rng, multi_turn, pools, lexicon)
            entry: dict[str, Any] = {"id": entry_id}
            if grounded is not None:
                items = grounded.items(row.caption, code, rng, qa_options)
                if not items:
                    qa_count["reports_without_terms"] += 1
                for item in items:
                    qa_count[f"{item.type}_{item.expected}" if item.type == "presence" else item.type] += 1
                    exchanges.append((item.type, item.question, item.answer))
                conv, entry["turn_types"] = place_turns(exchanges, len(paths), rng)
            else:
                conv, _ = place_turns(exchanges, len(paths))
            rel = [Path(os.path.relpath(p.resolve(), out_dir)).as_posix() for p in paths]
            entry.update({"image": rel, "conversations": conv, "lang": code})
            if format_out == "hf":
                source_captions[entry_id] = row.caption
            entries[split_of[paths]].append(entry)
            lengths[code].append(len(row.caption))
            turns_count[len(conv) // 2] += 1
            lang_count[code] += 1

    rows_out = sum(len(v) for v in entries.values())
    assert rows_in == rows_out + len(skips), (rows_in, rows_out, len(skips))
    summary: dict[str, Any] = {
        "format": fmt,
        "captions": str(source),
        "images": str(images_dir),
        "rows_in": rows_in,
        "rows_out": rows_out,
        "rows_skipped": len(skips),
        "splits": {name: len(v) for name, v in sorted(entries.items())},
        "images_per_split": {
            name: len({tuple(e["image"]) for e in v}) for name, v in sorted(entries.items())
        },
        "languages": dict(lang_count),
        "turns": {str(k): v for k, v in sorted(turns_count.items())},
        "grounded_questions": dict(sorted(qa_count.items())),
        "caption_chars": {
            code: {"min": min(v), "mean": round(statistics.fmean(v), 1), "max": max(v)}
            for code, v in lengths.items()
        },
        "skipped": skips,
        "outputs": {},
    }
    summary_path = out_path.with_name(out_path.stem + ".summary.json")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if not (strict and skips) and rows_out and format_out == "hf":
        from thinchat.hfdata import write_datasetdict

        named = {("train" if name == "all" else name): rows for name, rows in sorted(entries.items())}
        write_datasetdict(named, out_dir, out_path, source_captions)
        summary["outputs"] = {name: f"{out_path}/{name}" for name in named}
    elif not (strict and skips) and rows_out:
        for name, rows in sorted(entries.items()):
            target = (
                out_path if name == "all" else out_path.with_name(f"{out_path.stem}_{name}{out_path.suffix}")
            )
            target.write_text(json.dumps(rows, ensure_ascii=False, indent=1), encoding="utf-8")
            summary["outputs"][name] = str(target)
    summary_path.write_text(json.dumps(summary, ensure_ascii=False, indent=1), encoding="utf-8")
    summary["summary_file"] = str(summary_path)
    if strict and skips:
        first = skips[0]
        raise DataFormatError(
            f"--strict: {len(skips)} of {rows_in} rows skipped, nothing written; first: "
            f"{first['file']}:{first['line'] or '-'}: {first['reason']} (full report: {summary_path})"
        )
    if not rows_out:
        raise DataFormatError(f"no rows converted out of {rows_in}; see the skip report in {summary_path}")
    return summary


def format_summary(summary: dict[str, Any], max_skips: int = 20) -> str:
    """Human-readable summary and skip report for the CLI."""
    lines = [
        f"rows in {summary['rows_in']} = out {summary['rows_out']} + skipped {summary['rows_skipped']}",
        f"splits: {summary['splits']}  images: {summary['images_per_split']}",
        f"languages: {summary['languages']}  turns: {summary['turns']}",
        *(
            [f"grounded questions: {summary['grounded_questions']}"]
            if summary.get("grounded_questions")
            else []
        ),
        f"caption length (chars): {summary['caption_chars']}",
    ]
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
