"""Geometry of the synthetic thin sections: which phase sits where, with known ground truth.

Grains are cells of an anisotropic Voronoi tessellation (stretched along the fabric direction for a
preferred orientation), shrunk away from their cell borders; rounding trims the cell corners more than
the faces (grain pixel when ``d2 - d1 - roundness * d1`` is above the quantile that gives the grain fraction). The space between grains is shared by
clay matrix, carbonate cement, quartz overgrowths (optically continuous with their grain) and pores.
Micas are drawn as cleaved flakes, accessory minerals as small crystals. Composition varies by rock
type and by chance, so not every mineral appears in every slide.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from data_tools.synth_render import Field, P

ROUNDNESS = {"angular": 0.03, "subangular": 0.22, "subrounded": 0.5, "rounded": 0.9}
#: Field of view across the image, in mm (a 10x objective): grain sizes in mm do not depend on --size.
FIELD_MM = 2.24


@dataclass
class Recipe:
    """What to draw; sampled per slide by :func:`sample_recipe`."""

    rock: str  # sandstone | limestone | dolostone | siltstone
    grain_mm: float
    aspect: float
    angle: float
    roundness: str
    grain_frac: float  # fraction of the field covered by grains (the rest: matrix, cement, pores)
    framework: dict[str, float]  # phase -> relative abundance among grains
    interstitial: dict[str, float]  # phase -> relative abundance between grains
    silica: bool
    flakes: dict[str, int] = field(default_factory=dict)  # mica phase -> count
    accessories: dict[str, int] = field(default_factory=dict)


def sample_recipe(rng: np.random.Generator) -> Recipe:
    """Draw a rock type and a composition; presence of each optional phase is a coin toss."""
    rock = rng.choice(["sandstone", "sandstone", "sandstone", "limestone", "dolostone", "siltstone"])
    aspect = float(rng.choice([1.0, 1.15, 1.7, 2.1], p=[0.35, 0.2, 0.25, 0.2]))
    angle = float(rng.uniform(0, np.pi))
    roundness = str(rng.choice(list(ROUNDNESS)))
    flakes: dict[str, int] = {}
    acc: dict[str, int] = {}
    for name, prob in (("muscovite", 0.35), ("biotite", 0.3), ("chlorite", 0.2)):
        if rng.random() < prob:
            flakes[name] = int(rng.integers(3, 9))
    for name, prob in (("zircon", 0.35), ("tourmaline", 0.2), ("pyrite", 0.3)):
        if rng.random() < prob:
            acc[name] = int(rng.integers(2, 7))
    interstitial: dict[str, float] = {}
    silica = False
    if rock in ("sandstone", "siltstone"):
        framework = {"quartz": float(rng.uniform(2, 6))}
        if rng.random() < 0.6:
            framework["plagioclase"] = float(rng.uniform(0.5, 2.5))
        if rng.random() < 0.55:
            framework["k_feldspar"] = float(rng.uniform(0.5, 2.5))
        if rock == "siltstone":
            grain_mm = float(rng.uniform(0.05, 0.09))
            grain_frac, roundness = float(rng.uniform(0.35, 0.65)), "subrounded"
            interstitial = {"argillaceous_matrix": 1.0}
        else:
            grain_mm = float(np.exp(rng.uniform(np.log(0.1), np.log(0.6))))
            grain_frac = float(rng.uniform(0.62, 0.9))
            for name, prob in (
                ("argillaceous_matrix", 0.55),
                ("calcite", 0.35),
                ("dolomite", 0.15),
                ("pore", 0.5),
            ):
                if rng.random() < prob:
                    interstitial[name] = float(rng.uniform(0.5, 2.0))
            silica = rng.random() < 0.35
            if not interstitial:
                interstitial = {str(rng.choice(["argillaceous_matrix", "calcite", "pore"])): 1.0}
    else:
        main = "calcite" if rock == "limestone" else "dolomite"
        other = "dolomite" if main == "calcite" else "calcite"
        framework = {main: float(rng.uniform(6, 12))}
        if rng.random() < 0.4:
            framework[other] = float(rng.uniform(0.5, 3))
        if rng.random() < 0.35:
            framework["quartz"] = float(rng.uniform(0.3, 1.5))
        grain_mm = float(rng.uniform(0.06, 0.3))
        roundness, aspect = "angular", min(aspect, 1.15)
        for name, prob in (("pore", 0.45), ("argillaceous_matrix", 0.2)):
            if rng.random() < prob:
                interstitial[name] = 1.0
        grain_frac = float(rng.uniform(0.85, 0.97)) if interstitial else 1.0
        flakes.pop("biotite", None)
        flakes.pop("muscovite", None)
    return Recipe(
        str(rock),
        grain_mm,
        aspect,
        angle,
        roundness,
        grain_frac,
        framework,
        interstitial,
        silica,
        flakes,
        acc,
    )


def _choose(rng: np.random.Generator, weights: dict[str, float], n: int) -> np.ndarray:
    names = list(weights)
    probs = np.array([weights[k] for k in names], dtype=np.float64)
    picks = rng.choice(len(names), size=n, p=probs / probs.sum())
    return np.array([P[names[i]] for i in picks], dtype=np.uint8)


def _stretch(points: np.ndarray, aspect: float, angle: float) -> np.ndarray:
    """Map image (x, y) into the isotropic space of the tessellation (area preserving)."""
    c, s = np.cos(angle), np.sin(angle)
    u = points[:, 0] * c + points[:, 1] * s
    v = -points[:, 0] * s + points[:, 1] * c
    k = np.sqrt(aspect)
    return np.stack([u / k, v * k], axis=1)


def _noise_partition(
    rng: np.random.Generator, mask: np.ndarray, weights: dict[str, float], scale: float
) -> np.ndarray:
    """Split ``mask`` pixels among phases in blobs of about ``scale`` px, by quantiles of a smooth noise."""
    size = mask.shape[0]
    noise = ndimage.gaussian_filter(rng.standard_normal((size, size)).astype(np.float32), scale)
    values = noise[mask]
    out = np.zeros(values.shape, dtype=np.uint8)
    if values.size == 0:
        return out
    names = list(weights)
    probs = np.array([weights[k] for k in names], dtype=np.float64)
    cuts = np.quantile(values, np.cumsum(probs / probs.sum())[:-1]) if len(names) > 1 else np.array([])
    out[:] = np.array([P[n] for n in names], dtype=np.uint8)[np.searchsorted(cuts, values)]
    return out


def build_field(recipe: Recipe, size: int, rng: np.random.Generator) -> Field:
    """Lay out grains, interstitial phases, flakes and accessories for ``recipe`` at ``size`` px."""
    px_per_mm = size / FIELD_MM
    grain_px = recipe.grain_mm * px_per_mm
    pad = 1.5 * grain_px
    span = size + 2 * pad
    n_seeds = max(8, int(span * span / (0.785 * grain_px * grain_px)))
    seeds = rng.uniform(-pad, size + pad, size=(n_seeds, 2))
    yy, xx = np.mgrid[0:size, 0:size]
    pix = np.stack([xx.ravel(), yy.ravel()], axis=1).astype(np.float64)
    tree = cKDTree(_stretch(seeds, recipe.aspect, recipe.angle))
    dist, idx = tree.query(_stretch(pix, recipe.aspect, recipe.angle), k=2)
    d1, d2 = dist[:, 0].reshape(size, size), dist[:, 1].reshape(size, size)
    cell = idx[:, 0].reshape(size, size)
    lam = ROUNDNESS[recipe.roundness]
    score = (d2 - d1) - lam * d1
    if recipe.grain_frac >= 1.0:
        grain = np.ones_like(score, dtype=bool)
        cut = 0.0
    else:
        cut = float(np.quantile(score, 1.0 - recipe.grain_frac))
        grain = score > cut

    cell_phase = _choose(rng, recipe.framework, n_seeds)
    phase = cell_phase[cell].copy()
    inst = (cell + 1).astype(np.int32)
    core = (d1 / np.maximum(d1 + d2, 1e-6)).astype(np.float32)
    between = ~grain
    if recipe.silica:
        over = between & (phase == P["quartz"]) & (score > cut - max(1.0, 0.07 * grain_px))
        phase[over] = P["siliceous_cement"]
        between &= ~over
    n_inst = n_seeds + 1
    if recipe.interstitial:
        fill = _noise_partition(rng, between, recipe.interstitial, max(2.0, grain_px / 3))
        phase[between] = fill
        inst[between] = 0
        carbonate = between & np.isin(phase, [P["calcite"], P["dolomite"]])
        if carbonate.any():  # poikilotopic cement: few large crystals
            n_cem = int(rng.integers(4, 16))
            cem_tree = cKDTree(rng.uniform(0, size, size=(n_cem, 2)))
            _, cem_idx = cem_tree.query(pix[carbonate.ravel()], k=1)
            inst[carbonate] = n_inst + cem_idx
            n_inst += n_cem
    # else: no gaps in a carbonate mosaic, crystals keep their cell

    theta = rng.uniform(0, np.pi, size=n_inst + 200).astype(np.float32)
    alpha = rng.uniform(0, np.pi, size=n_inst + 200).astype(np.float32)
    gamma = rng.uniform(0.55, 1.0, size=n_inst + 200).astype(np.float32)
    phase, inst, n_inst = _draw_flakes(recipe, size, rng, phase, inst, n_inst, grain_px, alpha)
    phase, inst, n_inst = _draw_accessories(recipe, size, rng, phase, inst, n_inst, px_per_mm, alpha)
    return Field(phase, inst, theta[: n_inst + 1], alpha[: n_inst + 1], gamma[: n_inst + 1], core, grain_px)


def _stamp(size: int, cx: float, cy: float, half_len: float, half_wid: float, angle: float, shape: str):
    """Pixel mask (slices + bool array) of a rotated rectangle / ellipse centred at (cx, cy)."""
    r = int(np.ceil(max(half_len, half_wid))) + 1
    x0, x1 = max(0, int(cx) - r), min(size, int(cx) + r + 1)
    y0, y1 = max(0, int(cy) - r), min(size, int(cy) + r + 1)
    if x0 >= x1 or y0 >= y1:
        return None
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    c, s = np.cos(angle), np.sin(angle)
    u = ((xx - cx) * c + (yy - cy) * s) / half_len
    v = (-(xx - cx) * s + (yy - cy) * c) / half_wid
    mask = (np.abs(u) <= 1) & (np.abs(v) <= 1) if shape == "rect" else (u * u + v * v) <= 1
    return (slice(y0, y1), slice(x0, x1)), mask


def _place(
    hit: tuple[tuple[slice, slice], np.ndarray] | None,
    phase_id: int,
    phase: np.ndarray,
    inst: np.ndarray,
    n_inst: int,
    alpha: np.ndarray,
    extinction: float,
) -> int:
    """Paint a stamped grain (``_stamp``'s slices and mask) as the next instance, with its extinction angle;
    return the instance count (unchanged where the stamp fell outside the slide).

    Why one function: flakes and accessories are placed alike, so their instances number the same way.
    """
    if hit is None:
        return n_inst
    n_inst += 1
    sl, mask = hit
    phase[sl][mask] = phase_id
    inst[sl][mask] = n_inst
    alpha[n_inst] = extinction
    return n_inst


def _draw_flakes(recipe, size, rng, phase, inst, n_inst, grain_px, alpha):
    for name, count in recipe.flakes.items():
        for _ in range(count):
            length = float(rng.uniform(1.0, 1.8)) * max(grain_px, size / 10)
            width = length * float(rng.uniform(0.2, 0.32))
            ang = recipe.angle if recipe.aspect >= 1.5 else float(rng.uniform(0, np.pi))
            ang += float(rng.normal(0, 0.15))
            hit = _stamp(size, *rng.uniform(0, size, 2), length / 2, width / 2, ang, "rect")
            # cleavage traces parallel to the flake
            n_inst = _place(hit, P[name], phase, inst, n_inst, alpha, ang + np.pi / 2)
    return phase, inst, n_inst


def _draw_accessories(recipe, size, rng, phase, inst, n_inst, px_per_mm, alpha):
    dims = {
        "zircon": (0.08, 0.05, "ellipse"),
        "tourmaline": (0.12, 0.05, "rect"),
        "pyrite": (0.07, 0.07, "rect"),
    }
    for name, count in recipe.accessories.items():
        half_len, half_wid, shape = dims[name]
        for _ in range(count):
            scale = float(rng.uniform(0.8, 1.4)) * px_per_mm
            hit = _stamp(
                size,
                *rng.uniform(0, size, 2),
                half_len * scale,
                half_wid * scale,
                float(rng.uniform(0, np.pi)),
                shape,
            )
            n_inst = _place(hit, P[name], phase, inst, n_inst, alpha, 0.0)
    return phase, inst, n_inst
