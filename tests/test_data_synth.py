"""`data synth`: layout, determinism, labels agree with images and captions, round trip through convert."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_tools.convert import convert
from data_tools.synth import generate, make_slide
from data_tools.synth_render import PHASES, P
from thinchat.domain.lexicon import load_lexicon
from thinchat.domain.reports import parse_proportions
from thinchat.errors import DataFormatError

MINERALS = ("quartz", "plagioclase", "k_feldspar", "calcite", "dolomite", "muscovite", "biotite", "chlorite")


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    summary = generate(out, 24, seed=5, lang="both", size=128, workers=1)
    assert summary["slides"] == 24 and summary["images"] == 48
    return out


def _rows(path: Path) -> dict[str, str]:
    return dict(line.split("\t", 1) for line in path.read_text(encoding="utf-8").splitlines())


def test_layout(synth_dir: Path) -> None:
    labels = json.loads((synth_dir / "labels.json").read_text(encoding="utf-8"))
    assert labels["classes"] == list(PHASES) and len(labels["items"]) == 24
    for sid in labels["items"]:
        for view in ("ppl", "xpl"):
            img = Image.open(synth_dir / "images" / f"{sid}_{view}.png")
            assert img.size == (128, 128) and img.mode == "RGB"
    zh, en = _rows(synth_dir / "captions_zh.tsv"), _rows(synth_dir / "captions_en.tsv")
    assert list(zh) == list(en) == list(labels["items"])
    one = labels["items"]["00001"]
    assert {"rock", "proportions", "grain_size_mm", "roundness", "orientation", "pores", "sorting"} <= set(
        one
    )
    assert abs(sum(one["proportions"].values()) - 100.0) < 0.1


def test_captions_state_measured_proportions(synth_dir: Path) -> None:
    """Proportions measured on each label map agree with every percentage the captions state."""
    lex = load_lexicon()
    labels = json.loads((synth_dir / "labels.json").read_text(encoding="utf-8"))
    checked = 0
    for lang in ("zh", "en"):
        for sid, caption in _rows(synth_dir / f"captions_{lang}.tsv").items():
            mask = np.array(Image.open(synth_dir / "masks" / f"{sid}.png"))
            counts = np.bincount(mask.ravel(), minlength=len(PHASES))
            measured = {labels["classes"][i]: 100.0 * c / mask.size for i, c in enumerate(counts) if c}
            stated = parse_proportions(caption, lex)
            for phase, pct in measured.items():
                if pct >= 0.5:
                    assert phase in stated, (sid, lang, phase, pct, caption)
            for term, pct in stated.items():
                # whole percent from labels kept to 2 decimals: within 0.5 + 0.005 of the measured value
                assert abs(measured[term] - pct) <= 0.505 + 1e-9, (sid, term, pct, measured[term])
                checked += 1
            named = lex.find(caption, kinds={"mineral"})
            present = {m for m in MINERALS if measured.get(m, 0) >= 0.5}
            assert present <= named, (sid, present - named)
    assert checked > 100


def test_composition_varies(synth_dir: Path) -> None:
    labels = json.loads((synth_dir / "labels.json").read_text(encoding="utf-8"))["items"]
    presence = {m: sum(1 for v in labels.values() if v["proportions"].get(m, 0) >= 1) for m in MINERALS}
    assert all(0 < n < 24 for n in presence.values() if n), presence  # no mineral in every slide
    assert len({v["rock"] for v in labels.values()}) >= 3
    assert len({frozenset(k for k, p in v["proportions"].items() if p >= 1) for v in labels.values()}) >= 10


def test_deterministic_and_independent_of_n(tmp_path: Path) -> None:
    a = make_slide(7, 3, 96)
    b = make_slide(7, 3, 96)
    c = make_slide(8, 3, 96)
    assert all(np.array_equal(x, y) for x, y in zip(a[:3], b[:3], strict=True)) and a[3] == b[3]
    assert not np.array_equal(a[0], c[0])
    generate(tmp_path / "two", 2, seed=7, size=96, lang="zh", workers=1)
    generate(tmp_path / "four", 4, seed=7, size=96, lang="zh", workers=2)
    for name in ("images/00002_ppl.png", "images/00002_xpl.png", "masks/00001.png"):
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "four" / name).read_bytes()
    assert not (tmp_path / "two" / "captions_en.tsv").exists()


def test_minerals_distinguishable_in_ppl_and_xpl() -> None:
    """Mean PPL colour / XPL brightness per phase, pooled over slides, separate the main minerals."""
    sums: dict[str, list[np.ndarray]] = {}
    for index in range(30):
        ppl, xpl, phase, _ = make_slide(11, index, 128)
        for name in (
            "quartz",
            "k_feldspar",
            "pore",
            "argillaceous_matrix",
            "biotite",
            "chlorite",
            "pyrite",
            "calcite",
        ):
            mask = phase == P[name]
            if mask.sum() > 30:
                sums.setdefault(name, []).append(np.concatenate([ppl[mask].mean(0), xpl[mask].mean(0)]))
    mean = {k: np.mean(v, axis=0) for k, v in sums.items()}
    assert mean["pore"][2] > mean["pore"][0] + 60  # blue epoxy in PPL
    assert mean["pore"][3:].max() < 40 and mean["pyrite"][:6].max() < 40  # black in XPL / opaque (edges blur)
    assert mean["quartz"][:3].min() > 200 and mean["quartz"][:3].min() > mean["k_feldspar"][:3].min() + 20
    assert mean["argillaceous_matrix"][0] > mean["argillaceous_matrix"][2] + 30  # brown clay
    assert mean["chlorite"][1] > mean["chlorite"][0]  # green
    assert mean["calcite"][3:].mean() > mean["quartz"][3:].mean() * 0.6  # bright high-order colours
    keys = sorted(mean)
    for i, a in enumerate(keys):
        for b in keys[i + 1 :]:
            assert np.abs(mean[a] - mean[b]).max() > 15, (a, b)


def test_round_trip_convert(synth_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "syn.json"
    summary = convert(synth_dir / "captions_en.tsv", synth_dir / "images", out, multi_turn=True)
    rows = json.loads(out.read_text(encoding="utf-8"))
    assert summary["rows_out"] == 24 and summary["rows_skipped"] == 0
    first = rows[0]
    assert [Path(p).name for p in first["image"]] == ["00001_ppl.png", "00001_xpl.png"]
    assert first["conversations"][0]["value"].startswith("<image>\n<image>\n")
    assert max(int(k) for k in summary["turns"]) >= 4


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="--lang"):
        generate(tmp_path, 1, lang="fr")
    with pytest.raises(DataFormatError, match="--size"):
        generate(tmp_path, 1, size=8)
