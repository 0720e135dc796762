"""Optics of the synthetic thin sections: a phase map and crystal orientations -> PPL and XPL images.

Every phase gets the look a petrographer keys on, exaggerated just enough that a small vision model at
112 px can tell them apart: quartz clear in PPL and first-order grey-white with undulose extinction in
XPL; plagioclase with polysynthetic twin stripes; K-feldspar dusty brown (argillised) with cross-hatched
twinning; calcite and dolomite with rhombic cleavage and pastel high-order colours (calcite pink in PPL,
as in sections stained with alizarin red S; dolomite unstained, with cloudy cores); micas as cleaved
flakes (muscovite in vivid second-order colours, biotite brown and pleochroic, chlorite pale green);
tourmaline dark green prisms; clay matrix brown with a sericite speckle; pores filled with blue epoxy
(black under crossed polars); opaque pyrite black in both. XPL intensity follows
I = sin^2(2 theta) * sin^2(pi * retardation / lambda), averaged over wavelengths per channel, which
reproduces the Michel-Levy colour sequence.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

#: Phase names in label-map order (index = value in the mask PNG). Ids match the lexicon where one exists.
PHASES: tuple[str, ...] = (
    "pore",
    "argillaceous_matrix",
    "quartz",
    "plagioclase",
    "k_feldspar",
    "calcite",
    "dolomite",
    "muscovite",
    "biotite",
    "chlorite",
    "zircon",
    "tourmaline",
    "pyrite",
    "siliceous_cement",
)
P = {name: i for i, name in enumerate(PHASES)}


@dataclass(frozen=True)
class Optics:
    ppl: tuple[float, float, float]  # colour in PPL (0-1)
    ppl2: tuple[float, float, float]  # second pleochroic colour (same as ppl when not pleochroic)
    noise: float  # PPL texture amplitude
    relief: float  # darkening of grain borders in PPL
    retardation: float  # nm in a 30 um section; 0 = isotropic
    tint: tuple[float, float, float] = (1.0, 1.0, 1.0)  # XPL body-colour mask (biotite, tourmaline, chlorite)
    twin: int = 0  # 0 none, 1 polysynthetic, 2 cross-hatched, 3 calcite e-twin lamellae
    cleavage: int = 0  # 0 none, 1 one set (micas), 2 rhombic two sets (carbonates)
    undulose: float = 0.0  # extinction sweep across a grain (radians per grain width)
    cloudy: float = 0.0  # darkening of cloudy cores (dolomite) or dust (K-feldspar)


OPTICS: dict[str, Optics] = {
    "pore": Optics((0.22, 0.42, 0.86), (0.22, 0.42, 0.86), 0.04, 0.0, 0.0),
    "argillaceous_matrix": Optics((0.60, 0.47, 0.33), (0.60, 0.47, 0.33), 0.22, 0.0, 0.0),
    "quartz": Optics((0.94, 0.94, 0.92), (0.94, 0.94, 0.92), 0.015, 0.15, 270.0, undulose=0.6),
    "plagioclase": Optics((0.90, 0.90, 0.90), (0.90, 0.90, 0.90), 0.03, 0.2, 240.0, twin=1),
    "k_feldspar": Optics((0.80, 0.72, 0.64), (0.80, 0.72, 0.64), 0.10, 0.2, 200.0, twin=2, cloudy=0.25),
    "calcite": Optics((0.94, 0.74, 0.78), (0.84, 0.60, 0.66), 0.03, 0.35, 5200.0, twin=3, cleavage=2),
    "dolomite": Optics((0.84, 0.76, 0.64), (0.74, 0.65, 0.52), 0.05, 0.35, 5500.0, cleavage=2, cloudy=0.5),
    "muscovite": Optics((0.93, 0.93, 0.88), (0.88, 0.90, 0.82), 0.02, 0.3, 1150.0, cleavage=1),
    "biotite": Optics(
        (0.78, 0.60, 0.34), (0.40, 0.22, 0.08), 0.04, 0.3, 1300.0, tint=(0.75, 0.45, 0.20), cleavage=1
    ),
    "chlorite": Optics(
        (0.72, 0.86, 0.60), (0.55, 0.74, 0.48), 0.04, 0.25, 150.0, tint=(0.45, 0.65, 1.3), cleavage=1
    ),
    "zircon": Optics((0.92, 0.90, 0.86), (0.92, 0.90, 0.86), 0.02, 1.0, 1700.0),
    "tourmaline": Optics((0.40, 0.55, 0.42), (0.10, 0.20, 0.16), 0.03, 0.6, 800.0, tint=(0.4, 0.7, 0.5)),
    "pyrite": Optics((0.03, 0.03, 0.03), (0.03, 0.03, 0.03), 0.0, 0.0, 0.0),
    "siliceous_cement": Optics((0.94, 0.94, 0.92), (0.94, 0.94, 0.92), 0.015, 0.0, 270.0, undulose=0.6),
}

_ISOTROPIC_DARK = {"pore", "pyrite"}
# Wavelength samples per channel (R, G, B), nm: averaging over a band turns high orders into pastel white.
_WAVELENGTHS = np.stack([np.linspace(575, 680, 12), np.linspace(495, 575, 12), np.linspace(420, 495, 12)])


def _table(attr: str) -> np.ndarray:
    return np.array([getattr(OPTICS[name], attr) for name in PHASES], dtype=np.float32)


_PPL, _PPL2, _NOISE, _RELIEF = _table("ppl"), _table("ppl2"), _table("noise"), _table("relief")
_RET, _TINT, _TWIN, _CLEAV = _table("retardation"), _table("tint"), _table("twin"), _table("cleavage")
_UND, _CLOUD = _table("undulose"), _table("cloudy")


def interference_colour(retardation: np.ndarray) -> np.ndarray:
    """RGB (0-1) at 45 degrees from extinction for each retardation (nm): the Michel-Levy colour."""
    ret = np.asarray(retardation, dtype=np.float32)[..., None, None]
    return (np.sin(np.pi * ret / _WAVELENGTHS) ** 2).mean(axis=-1)


@dataclass
class Field:
    """A synthetic field of view: per-pixel phase and crystal instance, per-instance orientation."""

    phase: np.ndarray  # (S, S) uint8 index into PHASES
    inst: np.ndarray  # (S, S) int32 crystal instance (0 = none: matrix, pore)
    theta: np.ndarray  # (n_inst,) extinction angle (radians)
    alpha: np.ndarray  # (n_inst,) texture angle: cleavage / twin planes / flake elongation
    gamma: np.ndarray  # (n_inst,) retardation scale 0-1 (crystal cut)
    core: np.ndarray  # (S, S) 0 at a crystal centre ... 0.5 at its border (cloudy cores)
    grain_px: float  # nominal grain diameter in pixels (texture scales follow it)


def render(field: Field, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(PPL, XPL) uint8 RGB images of ``field``."""
    size = field.phase.shape[0]
    phase = field.phase.astype(np.intp)
    inst = field.inst
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    a = field.alpha

    def tex(offset: float) -> np.ndarray:  # coordinate across planes at angle alpha + offset
        return xx * np.cos(a + offset)[inst] + yy * np.sin(a + offset)[inst]

    tex1, tex2, tex3 = tex(0.0), tex(1.31), tex(1.5708)  # tex2: second cleavage set at 75 degrees
    twin_w = max(2.0, size / 75.0)

    theta = field.theta[inst] + _UND[phase] * (tex3 / max(field.grain_px, 4.0)) * 0.5
    twin = _TWIN[phase]
    stripes = np.floor(tex1 / twin_w).astype(np.int64) & 1
    cross = (
        np.floor(tex1 / (0.8 * twin_w)).astype(np.int64) ^ np.floor(tex3 / (0.8 * twin_w)).astype(np.int64)
    ) & 1
    lamellae = (np.floor(tex2 / (1.2 * twin_w)).astype(np.int64) & 1) * (field.gamma[inst] > 0.88)
    theta = theta + np.where(twin == 1, stripes * 0.7, 0.0) + np.where(twin == 2, cross * 0.45, 0.0)
    theta = theta + np.where(twin == 3, lamellae * 0.3, 0.0)

    fine = ndimage.gaussian_filter(rng.standard_normal((size, size)).astype(np.float32), 0.8)
    fine /= fine.std() + 1e-6
    dust = ndimage.gaussian_filter(rng.standard_normal((size, size)).astype(np.float32), 2.0)
    dust /= dust.std() + 1e-6

    # --- PPL ---
    pleo = np.cos(field.theta[inst]) ** 2
    ppl = _PPL[phase] + (_PPL2[phase] - _PPL[phase]) * pleo[..., None]
    ppl = ppl * (1.0 + _NOISE[phase] * fine)[..., None]
    cleave_w = max(1.0, size / 160.0)
    spacing = max(6.0, field.grain_px / 2.5)
    line1 = (np.mod(tex1, spacing) < cleave_w).astype(np.float32)
    line2 = (np.mod(tex2, spacing * 1.3) < cleave_w).astype(np.float32)
    cleav = _CLEAV[phase] * ((_CLEAV[phase] == 1) | (field.gamma[inst] < 0.8))  # carbonates: some crystals
    ppl *= (1.0 - 0.2 * np.where(cleav >= 1, line1, 0.0) - 0.15 * np.where(cleav == 2, line2, 0.0))[..., None]
    cloud = _CLOUD[phase] * np.where(phase == P["dolomite"], (field.core < 0.3), 0.6 + 0.4 * np.tanh(dust))
    ppl *= (1.0 - cloud * (0.75 + 0.25 * fine))[..., None]
    edges = np.zeros((size, size), dtype=np.float32)
    diff_x = inst[:, 1:] != inst[:, :-1]
    diff_y = inst[1:, :] != inst[:-1, :]
    relief = _RELIEF[phase]
    edges[:, 1:] = np.maximum(edges[:, 1:], diff_x * np.maximum(relief[:, 1:], relief[:, :-1]))
    edges[1:, :] = np.maximum(edges[1:, :], diff_y * np.maximum(relief[1:, :], relief[:-1, :]))
    edges = np.clip(ndimage.gaussian_filter(edges, 0.7) * 2.0, 0.0, 0.8)
    ppl *= (1.0 - 0.6 * edges)[..., None]

    # --- XPL ---
    ret_inst = np.zeros(field.gamma.shape, dtype=np.float32)
    ret_inst[inst.ravel()] = (_RET[phase] * field.gamma[inst]).ravel()  # one value per crystal
    colour = interference_colour(ret_inst)[inst] * _TINT[phase]
    ext = np.sin(2.0 * theta) ** 2
    xpl = colour * ext[..., None]
    matrix = phase == P["argillaceous_matrix"]
    speckle = np.clip(fine - 1.2, 0.0, None) * 0.35
    xpl[matrix] = (0.10 + 0.04 * dust[matrix] + speckle[matrix])[:, None] * np.array([1.0, 0.95, 0.8])
    dark = np.isin(phase, [P[n] for n in _ISOTROPIC_DARK])
    xpl[dark] = 0.02

    out = []
    for img in (ppl, xpl):
        img = ndimage.gaussian_filter(img, sigma=(0.55, 0.55, 0))
        img += rng.normal(0.0, 0.012, img.shape).astype(np.float32)
        out.append((np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8))
    return out[0], out[1]
