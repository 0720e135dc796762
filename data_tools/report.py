"""Petrographic reports from ground-truth labels (the captions of synthetic slides).

Synthetic captions are a deterministic function of the labels, one sentence per facet in a fixed order
(composition, matrix, carbonate, silica, feldspar alteration, micas and accessories, optics, grain size,
fabric, pores), so a model can learn the mapping and the evaluation can read the numbers back. Every
proportion is written as ``名称约占N%`` (Chinese) or ``name (about N%)`` (English); phases of 0.3-0.5%
are called 少量 / trace without a number, smaller ones are not mentioned (too small to see).
``thinchat.domain.reports.parse_proportions`` reads them back from any caption.
"""

from __future__ import annotations

import math
from typing import Any

FRAMEWORK = ("quartz", "plagioclase", "k_feldspar")
FLAKES = ("muscovite", "biotite", "chlorite")
ACCESSORIES = ("zircon", "tourmaline", "pyrite")
SIZE_CLASSES = ((0.0625, "silt"), (0.125, "very_fine_sand"), (0.25, "fine_sand"), (0.5, "medium_sand"))

_ZH = {
    "quartz": "石英", "plagioclase": "斜长石", "k_feldspar": "钾长石", "calcite": "方解石", "dolomite": "白云石",
    "muscovite": "白云母", "biotite": "黑云母", "chlorite": "绿泥石", "zircon": "锆石", "tourmaline": "电气石",
    "pyrite": "黄铁矿", "argillaceous_matrix": "泥质", "siliceous_cement": "硅质", "pore": "孔隙",
    "silt": "粉砂", "very_fine_sand": "极细砂", "fine_sand": "细砂", "medium_sand": "中砂", "coarse_sand": "粗砂",
    "angular": "棱角状", "subangular": "次棱角状", "subrounded": "次圆状", "rounded": "圆状",
    "good": "好", "moderate": "中等", "poor": "差",
}  # fmt: skip
_EN = {
    "quartz": "quartz", "plagioclase": "plagioclase", "k_feldspar": "K-feldspar", "calcite": "calcite",
    "dolomite": "dolomite", "muscovite": "muscovite", "biotite": "biotite", "chlorite": "chlorite",
    "zircon": "zircon", "tourmaline": "tourmaline", "pyrite": "pyrite", "argillaceous_matrix": "argillaceous matrix",
    "siliceous_cement": "siliceous cement", "pore": "pores", "silt": "silt", "very_fine_sand": "very fine sand",
    "fine_sand": "fine sand", "medium_sand": "medium sand", "coarse_sand": "coarse sand", "angular": "angular",
    "subangular": "subangular", "subrounded": "subrounded", "rounded": "rounded", "good": "well",
    "moderate": "moderately", "poor": "poorly",
}  # fmt: skip


def size_class(median_mm: float) -> str:
    for limit, name in SIZE_CLASSES:
        if median_mm < limit:
            return name
    return "coarse_sand"


def _pct(p: float) -> int:
    return math.floor(p + 0.5)  # half up: 0.5% is written as 1%


def _item(phase: str, p: float, lang: str) -> str:
    if lang == "zh":
        return f"{_ZH[phase]}约占{_pct(p)}%" if _pct(p) >= 1 else f"{_ZH[phase]}少量"
    return f"{_EN[phase]} (about {_pct(p)}%)" if _pct(p) >= 1 else f"{_EN[phase]} (trace)"


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


#: Phases covering less of the field than this (in percent) are not mentioned: too small to see.
MENTION_MIN = 0.3


def _present(props: dict[str, float], names: tuple[str, ...]) -> list[str]:
    return sorted((n for n in names if props.get(n, 0.0) >= MENTION_MIN), key=lambda n: -props[n])


def _main_carbonate(rock: str) -> str:
    """The carbonate a carbonate rock is made of (its mosaic), described first rather than as a cement."""
    return "calcite" if rock == "limestone" else "dolomite"


def _composition(props: dict[str, float], rock: str, framework: list[str], lang: str) -> list[str]:
    """Composition: a carbonate rock's mosaic and its detrital grains, or a clastic rock's framework."""
    zh = lang == "zh"
    join = "，" if zh else ", "
    out: list[str] = []
    if rock in ("limestone", "dolostone"):
        main = _main_carbonate(rock)
        habit = (
            ("呈亮晶镶嵌状" if main == "calcite" else "呈细晶镶嵌状，雾心亮边")
            if zh
            else (
                "forms a sparry mosaic"
                if main == "calcite"
                else "forms a fine crystalline mosaic with cloudy cores"
            )
        )
        out.append(
            f"{_item(main, props[main], lang)}，{habit}。"
            if zh
            else f"{_cap(_item(main, props[main], lang))} {habit}."
        )
        if framework:
            items = join.join(_item(n, props[n], lang) for n in framework)
            out.append(f"陆源碎屑见{items}。" if zh else f"Detrital grains: {items}.")
    elif framework:
        items = join.join(_item(n, props[n], lang) for n in framework)
        out.append(f"碎屑成分：{items}。" if zh else f"Framework grains: {items}.")
    return out


def _matrix(props: dict[str, float], lang: str) -> list[str]:
    """The argillaceous matrix, said to be even from 20% up."""
    if props.get("argillaceous_matrix", 0) < MENTION_MIN:
        return []
    even = props["argillaceous_matrix"] >= 20
    m = _item("argillaceous_matrix", props["argillaceous_matrix"], lang)
    return [
        f"{m}，呈隐晶状，分布{'较均匀' if even else '欠均'}。"
        if lang == "zh"
        else f"{_cap(m)} is cryptocrystalline and {'evenly' if even else 'unevenly'} distributed."
    ]


def _carbonate_cements(props: dict[str, float], rock: str, lang: str) -> list[str]:
    """Calcite and dolomite other than a carbonate rock's own mosaic (already in the composition)."""
    zh = lang == "zh"
    carbonate_rock = rock in ("limestone", "dolostone")
    out: list[str] = []
    for carb in ("calcite", "dolomite"):
        if props.get(carb, 0) >= MENTION_MIN and not (carbonate_rock and carb == _main_carbonate(rock)):
            it = _item(carb, props[carb], lang)
            if carb == "calcite" and carbonate_rock:  # crystals of the dolostone mosaic
                out.append(
                    f"{it}，呈亮晶斑块状分布。"
                    if zh
                    else f"{_cap(it)} occurs as sparry patches in the mosaic."
                )
            elif carb == "calcite":
                out.append(f"{it}，呈连晶状胶结。" if zh else f"{_cap(it)} forms poikilotopic cement.")
            else:
                out.append(
                    f"{it}，呈细晶状，雾心亮边。"
                    if zh
                    else f"{_cap(it)} is fine crystalline with cloudy cores and clear rims."
                )
    return out


def _silica_and_alteration(props: dict[str, float], framework: list[str], lang: str) -> list[str]:
    """Siliceous cement (quartz overgrowths), then K-feldspar's argillization whenever it is present."""
    zh = lang == "zh"
    out: list[str] = []
    if props.get("siliceous_cement", 0) >= MENTION_MIN:
        it = _item("siliceous_cement", props["siliceous_cement"], lang)
        out.append(
            f"{it}，呈石英次生加大边围绕颗粒分布。"
            if zh
            else f"{_cap(it)} occurs as quartz overgrowths around the grains."
        )
    if "k_feldspar" in framework:
        out.append("钾长石具粘土化。" if zh else "K-feldspar shows argillization.")
    return out


def _flakes_and_accessories(props: dict[str, float], lang: str) -> list[str]:
    """Micas and chlorite, then accessory minerals, each listed most abundant first."""
    zh = lang == "zh"
    join = "，" if zh else ", "
    out: list[str] = []
    flakes = _present(props, FLAKES)
    if flakes:
        items = join.join(_item(n, props[n], lang) for n in flakes)
        out.append(f"片状矿物见{items}。" if zh else f"Platy minerals: {items}.")
    acc = _present(props, ACCESSORIES)
    if acc:
        items = join.join(_item(n, props[n], lang) for n in acc)
        out.append(f"副矿物见{items}。" if zh else f"Accessory minerals: {items}.")
    return out


def _optics(framework: list[str], lang: str) -> list[str]:
    """What the framework grains show under crossed polars (extinction, twinning)."""
    optics = [
        (n, f)
        for n, f in (("quartz", "undulose"), ("plagioclase", "twin"), ("k_feldspar", "grid"))
        if n in framework
    ]
    if not optics:
        return []
    words_zh = {"undulose": "具波状消光", "twin": "见聚片双晶", "grid": "见格子双晶"}
    words_en = {"undulose": "shows undulose extinction", "twin": "shows polysynthetic twinning",
                "grid": "shows cross-hatched twinning"}  # fmt: skip
    if lang == "zh":
        return ["正交偏光下，" + "，".join(_ZH[n] + words_zh[f] for n, f in optics) + "。"]
    return ["Under crossed polars " + ", ".join(f"{_EN[n]} {words_en[f]}" for n, f in optics) + "."]


def _size_and_fabric(labels: dict[str, Any], lang: str) -> list[str]:
    """Grain (or crystal) size range, then sorting, roundness and orientation for a clastic rock."""
    zh = lang == "zh"
    gs = labels["grain_size_mm"]
    rng_txt = f"{gs['p10']:.2f}-{gs['p90']:.2f}mm" if zh else f"{gs['p10']:.2f}-{gs['p90']:.2f} mm"
    if labels["rock"] in ("limestone", "dolostone"):
        return [
            f"晶粒大小{rng_txt}。" if zh else f"Crystal size is {rng_txt}.",
            "晶粒呈镶嵌状接触。" if zh else "Crystals form an interlocking mosaic.",
        ]
    cls, sort = labels["grain_size_class"], labels["sorting"]
    oriented = labels["orientation"]["oriented"]
    rnd = labels["roundness"]
    return [
        f"碎屑粒径{rng_txt}，以{_ZH[cls]}为主，分选{_ZH[sort]}。"
        if zh
        else f"Grain size is {rng_txt}, mainly {_EN[cls]}, {_EN[sort]} sorted.",
        f"颗粒呈{_ZH[rnd]}，{'长轴大致具定向性' if oriented else '排列无明显方向'}。"
        if zh
        else f"Grains are {_EN[rnd]}, {'with long axes showing a preferred orientation' if oriented else 'randomly arranged'}.",
    ]


def _pores(props: dict[str, float], rock: str, lang: str) -> list[str]:
    """Porosity and its kind: dissolution pores in a carbonate rock, intergranular ones otherwise."""
    if props.get("pore", 0) < MENTION_MIN:
        return []
    kind_zh, kind_en = (
        ("溶孔", "dissolution pores")
        if rock in ("limestone", "dolostone")
        else ("粒间孔", "intergranular pores")
    )
    it = _item("pore", props["pore"], lang)
    return [f"{it}，以{kind_zh}为主。" if lang == "zh" else f"{_cap(it)} are mainly {kind_en}."]


def caption(labels: dict[str, Any], lang: str) -> str:
    """The report for one slide's labels (see ``synth.generate``) in ``lang`` ("zh" or "en").

    One helper per facet, called in the module's fixed facet order.
    """
    props: dict[str, float] = labels["proportions"]
    rock = labels["rock"]
    framework = _present(props, FRAMEWORK)
    out = [
        *_composition(props, rock, framework, lang),
        *_matrix(props, lang),
        *_carbonate_cements(props, rock, lang),
        *_silica_and_alteration(props, framework, lang),
        *_flakes_and_accessories(props, lang),
        *_optics(framework, lang),
        *_size_and_fabric(labels, lang),
        *_pores(props, rock, lang),
    ]
    return "".join(out) if lang == "zh" else " ".join(out)
