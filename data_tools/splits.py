"""Splits for ``thinchat data convert``: ratios from ``--split``, a seeded draw by slide (within each class
for labelled slides), and the fixed splits of ``--test-ids`` / ``--val-ids``.

Splits are drawn by slide (its image files), never by caption, so no image leaks between train and test.
"""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path
from typing import Any

from thinchat.errors import DataFormatError

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


def assign_splits(
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
    drawn = assign_splits(rest, rest_ratios, seed, strata)
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
