"""Building the entries of ``thinchat data convert``: accepted rows grouped by slide, each slide's id and
split, and one LLaVA conversation entry per caption (the description turn, then the follow-ups of the one
generator ``GroundedQA``: ``--multi-turn`` facets, ``--qa-turns`` grounded questions); labelled images get
their description written from their classes.
"""

from __future__ import annotations

import dataclasses
import os
import random
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from data_tools.convert_rows import Reading
from data_tools.sources import Row
from data_tools.splits import assign_fixed_splits, assign_splits, read_ids
from data_tools.turns import describe_exchange, place_turns
from thinchat.domain.grounded_qa import GroundedQA, QAOptions, TermPool
from thinchat.domain.language import language_of
from thinchat.images import PAIR_SUFFIXES, slide_id


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


def _detect_lang(caption: str, forced: str, row_lang: str | None) -> str:
    if forced in ("zh", "en"):
        return forced
    if row_lang in ("zh", "en"):
        return row_lang
    return language_of(caption)


def slides(
    reading: Reading,
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
        split_of = assign_splits(list(per_image), ratios, seed, strata)
    return per_image, base_ids, split_of


def label_set(reading: Reading, lexicon: Any, lang: str, pools: Any, seed: int, multi_label: bool | None):
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


def follow_up_generator(
    reading: Reading, classes: Any, lexicon: Any, pools: Any, options: QAOptions
) -> GroundedQA | None:
    """The follow-up generator (None when ``options`` asks for no follow-up): over the dataset's reports,
    or over the label set (its "no" terms are the other classes, never a finer term of an umbrella class).

    Facet follow-ups alone need no term pool, so none is counted over the reports then."""
    if not options.total and not options.facets:
        return None
    if classes is None:
        reports = (r.caption for r, _ in reading.accepted) if options.total else ()
        return GroundedQA(lexicon, TermPool.from_reports(reports, lexicon), pools)
    counts = Counter(classes.term_of[c] for row, _ in reading.accepted for c in row.classes)
    return GroundedQA(classes.lexicon, TermPool(counts), pools)


@dataclass
class Built:
    """The converted entries per split, and what the summary counts about them."""

    entries: dict[str, list[dict[str, Any]]] = dataclasses.field(default_factory=lambda: defaultdict(list))
    lengths: dict[str, list[int]] = dataclasses.field(default_factory=lambda: defaultdict(list))
    turns: Counter[int] = dataclasses.field(default_factory=Counter)
    langs: Counter[str] = dataclasses.field(default_factory=Counter)
    qa: Counter[str] = dataclasses.field(default_factory=Counter)
    source_captions: dict[str, str] = dataclasses.field(default_factory=dict)


def _entry(
    row: Row, entry_id: str, paths: tuple[Path, ...], code: str, options: dict[str, Any], built: Built
):
    """One conversation entry: the description exchange, then the generator's follow-ups; shuffled (and
    typed in ``turn_types``) when there are grounded questions, whose place must not give them away."""
    rng = random.Random(f"{options['seed']}\0{entry_id}")
    qa_options: QAOptions = options["qa_options"]
    exchanges = [describe_exchange(row.caption, code, rng, options["pools"])]
    follow_ups = options["follow_ups"]
    items = follow_ups.items(row.caption, code, rng, qa_options) if follow_ups is not None else []
    exchanges += [(item.type, item.question, item.answer) for item in items]
    entry: dict[str, Any] = {"id": entry_id}
    if qa_options.total:
        grounded = [item for item in items if item.type != "facet"]
        if not grounded:
            built.qa["reports_without_terms"] += 1
        for item in grounded:
            built.qa[f"{item.type}_{item.expected}" if item.type == "presence" else item.type] += 1
        conv, entry["turn_types"] = place_turns(exchanges, len(paths), rng, options["describe_first"])
    else:
        conv, _ = place_turns(exchanges, len(paths))
    rel = [Path(os.path.relpath(p.resolve(), options["out_dir"])).as_posix() for p in paths]
    entry.update({"image": rel, "conversations": conv, "lang": code})
    if row.classes:
        entry["labels"] = list(row.classes)
    return entry, conv


def build_entries(
    per_image: dict[tuple[Path, ...], list[Row]],
    base_ids: dict[tuple[Path, ...], str],
    split_of: dict[tuple[Path, ...], str],
    options: dict[str, Any],
) -> Built:
    """Every accepted row as an entry of its slide's split (ids ``{slide}`` or ``{slide}_{k}``)."""
    built = Built()
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
