"""Synthetic thin sections with known ground truth: ``thinchat data synth`` and :func:`generate`.

Each slide is one field of view rendered twice, in plane-polarised (PPL) and cross-polarised (XPL)
light, with its label map, its measured proportions and a report in Chinese and English. The set feeds
the quickstart demo, the tests and the benchmarks, so it is deterministic by seed (slide ``i`` uses the
random stream ``(seed, i)`` and does not depend on ``n``) and cheap enough to make by the thousand.

Layout of ``out_dir``::

    images/{id}_ppl.png, images/{id}_xpl.png   the two views (PPL first in the converted data)
    masks/{id}.png                             label map: pixel value = index into labels.json "classes"
    captions_zh.tsv, captions_en.tsv           ThinGPT TSV: id<TAB>caption
    labels.json                                {"classes": [...], "items": {id: labels}}
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from data_tools.report import caption, size_class
from data_tools.synth_layout import FIELD_MM, ROUNDNESS, build_field, sample_recipe
from data_tools.synth_render import PHASES, P, render
from thinchat.errors import DataFormatError

LANGS = {"zh": ("zh",), "en": ("en",), "both": ("zh", "en")}
GRAIN_PHASES = ("quartz", "plagioclase", "k_feldspar", "calcite", "dolomite")


def _grain_sizes(phase: np.ndarray, inst: np.ndarray, mm_per_px: float) -> dict[str, float]:
    """10th/50th/90th percentile of the equivalent diameters of framework grains, in mm."""
    mask = np.isin(phase, [P[n] for n in GRAIN_PHASES]) & (inst > 0)
    areas = np.bincount(inst[mask].ravel())
    areas = areas[areas >= 4]
    if areas.size == 0:
        return {"p10": 0.0, "median": 0.0, "p90": 0.0}
    diam = np.sqrt(4.0 * areas / np.pi) * mm_per_px
    p10, med, p90 = np.percentile(diam, [10, 50, 90])
    return {"p10": round(float(p10), 3), "median": round(float(med), 3), "p90": round(float(p90), 3)}


def make_slide(
    seed: int, index: int, size: int = 224
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """One slide: (PPL, XPL, label map, labels). Deterministic in (seed, index, size)."""
    rng = np.random.default_rng([seed, index])
    recipe = sample_recipe(rng)
    field = build_field(recipe, size, rng)
    ppl, xpl = render(field, rng)
    counts = np.bincount(field.phase.ravel(), minlength=len(PHASES))
    total = float(field.phase.size)
    props = {PHASES[i]: round(100.0 * c / total, 2) for i, c in enumerate(counts) if c > 0}
    mm_per_px = FIELD_MM / size
    sizes = _grain_sizes(field.phase, field.inst, mm_per_px)
    grain_mask = np.isin(field.phase, [P[n] for n in GRAIN_PHASES]) & (field.inst > 0)
    diam = np.sqrt(4.0 * np.bincount(field.inst[grain_mask].ravel()) / np.pi)
    diam = diam[diam >= 2.3]
    cv = float(diam.std() / diam.mean()) if diam.size > 1 else 0.0
    labels: dict[str, Any] = {
        "rock": recipe.rock,
        "size": size,
        "mm_per_px": round(mm_per_px, 6),
        "proportions": props,
        "grain_size_mm": sizes,
        "grain_size_class": size_class(sizes["median"]),
        "sorting": "good" if cv < 0.3 else "moderate" if cv < 0.5 else "poor",
        "roundness": recipe.roundness,
        "orientation": {
            "oriented": recipe.aspect >= 1.5,
            "aspect": recipe.aspect,
            "angle_deg": round(float(np.degrees(recipe.angle)), 1),
        },
        "pores": {
            "percent": props.get("pore", 0.0),
            "type": "dissolution" if recipe.rock in ("limestone", "dolostone") else "intergranular",
        },
    }
    return ppl, xpl, field.phase, labels


def slide_id(index: int) -> str:
    return f"{index + 1:05d}"


def _clean(text: str) -> str:
    return text.replace("\t", " ").replace("\n", " ")


def _write_slide(
    job: tuple[str, int, int, int, tuple[str, ...]],
) -> tuple[str, dict[str, Any], dict[str, str]]:
    """Render and save one slide (a top-level function so worker processes can run it)."""
    out_dir, seed, index, size, langs = job
    out = Path(out_dir)
    sid = slide_id(index)
    ppl, xpl, phase, labels = make_slide(seed, index, size)
    Image.fromarray(ppl).save(out / "images" / f"{sid}_ppl.png", compress_level=1)
    Image.fromarray(xpl).save(out / "images" / f"{sid}_xpl.png", compress_level=1)
    Image.fromarray(phase).save(out / "masks" / f"{sid}.png", compress_level=1)
    return sid, labels, {code: _clean(caption(labels, code)) for code in langs}


def generate(
    out_dir: str | Path,
    n: int,
    seed: int = 0,
    lang: str = "both",
    size: int = 224,
    workers: int | None = None,
) -> dict[str, Any]:
    """Write ``n`` synthetic slides to ``out_dir`` (layout in the module docstring); return a summary.

    ``workers`` processes render in parallel (default: one per CPU); the output does not depend on it.
    """
    if lang not in LANGS:
        raise DataFormatError(f"--lang {lang!r}: expected one of {', '.join(LANGS)}")
    if n < 1:
        raise DataFormatError(f"--n {n}: expected at least 1 slide")
    if not 32 <= size <= 2048:
        raise DataFormatError(f"--size {size}: expected 32 to 2048 pixels")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    langs = LANGS[lang]
    captions: dict[str, list[str]] = {code: [] for code in langs}
    items: dict[str, Any] = {}
    start = time.perf_counter()
    jobs = [(str(out), seed, index, size, langs) for index in range(n)]
    workers = max(1, min(workers if workers is not None else (os.cpu_count() or 1), n))
    if workers == 1:
        results = map(_write_slide, jobs)
        results = tqdm(results, total=n, desc="synth", unit="slide")
        done = list(results)
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = pool.map(_write_slide, jobs, chunksize=max(1, min(32, n // (4 * workers))))
            done = list(tqdm(results, total=n, desc="synth", unit="slide"))
    for sid, labels, texts in done:
        items[sid] = labels
        for code in langs:
            captions[code].append(f"{sid}\t{texts[code]}\n")
    for code in langs:
        (out / f"captions_{code}.tsv").write_text("".join(captions[code]), encoding="utf-8")
    meta = {"classes": list(PHASES), "field_mm": FIELD_MM, "seed": seed, "roundness_levels": list(ROUNDNESS)}
    (out / "labels.json").write_text(
        json.dumps({**meta, "items": items}, ensure_ascii=False, indent=1), encoding="utf-8"
    )
    seconds = time.perf_counter() - start
    rocks: dict[str, int] = {}
    for labels in items.values():
        rocks[labels["rock"]] = rocks.get(labels["rock"], 0) + 1
    return {
        "out_dir": str(out),
        "slides": n,
        "images": 2 * n,
        "size": size,
        "seed": seed,
        "languages": list(langs),
        "captions": {code: str(out / f"captions_{code}.tsv") for code in langs},
        "labels": str(out / "labels.json"),
        "rocks": rocks,
        "workers": workers,
        "seconds": round(seconds, 2),
        "slides_per_s": round(n / seconds, 2) if seconds > 0 else None,
    }
