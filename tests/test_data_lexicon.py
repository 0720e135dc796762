"""The lexicon finds exactly the terms a report names (zh, en, mixed): the eval's term F1 relies on it."""

from __future__ import annotations

import pytest

from thinchat.domain.language import is_chinese
from thinchat.domain.lexicon import load_lexicon
from thinchat.errors import DataFormatError

LEX = load_lexicon()

REPORT_ZH = (
    "泥质呈纤维状、隐晶状，大部分已绢云母化，分布欠均。方解石呈粉晶-细晶状，含铁。硅质围绕颗粒分布。"
    "长石具粘土化。少见锆石、电气石等。碎屑长轴大致具定向性。"
)


def test_chinese_report_minerals() -> None:
    assert LEX.find(REPORT_ZH, kinds={"mineral"}) == {"calcite", "feldspar", "zircon", "tourmaline"}
    found = LEX.find(REPORT_ZH)
    assert {"argillaceous_matrix", "sericitization", "siliceous_cement", "argillization"} <= found
    assert "preferred_orientation" in found


def test_chinese_longest_match_first() -> None:
    assert LEX.find("大部分已绢云母化") == {"sericitization"}
    assert LEX.find("见绢云母") == {"sericite"}
    assert LEX.find("斜长石") == {"plagioclase"}
    assert LEX.find("钾长石") == {"k_feldspar"}
    assert LEX.find("白云母与白云石") == {"muscovite", "dolomite"}
    assert LEX.find("黑云母") == {"biotite"}
    assert LEX.find("云母") == {"mica"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("K-feldspar", {"k_feldspar"}),
        ("k feldspar", {"k_feldspar"}),
        ("Kfeldspar", {"k_feldspar"}),
        ("potassium feldspars", {"k_feldspar"}),
        ("Plagioclase feldspar", {"plagioclase"}),
        ("QUARTZ grains", {"quartz"}),
        ("micas", {"mica"}),
        ("calcites and dolomites", {"calcite", "dolomite"}),
        ("sericitization of feldspar", {"sericitization", "feldspar"}),
        ("sericite", {"sericite"}),
        ("quartzite-free", {"quartz"} - {"quartz"}),  # no word-boundary match inside "quartzite"
        ("undulose extinction", {"undulose_extinction"}),
        ("under plane-polarized light", {"ppl"}),
        ("plane polarized light", {"ppl"}),
        # participles name the same alteration as the noun (reports write "argillized K-feldspar")
        ("strongly argillized K-feldspar", {"argillization", "k_feldspar"}),
        ("kaolinised and chloritised biotite", {"kaolinization", "chloritization", "biotite"}),
        ("partly dolomitised, carbonatized matrix", {"dolomitization", "carbonatization", "matrix"}),
    ],
)
def test_english_variants(text: str, expected: set[str]) -> None:
    assert LEX.find(text) == expected


def test_mixed_language_same_ids() -> None:
    assert LEX.find("石英quartz") == {"quartz"}
    assert LEX.find("钾长石 and K-feldspar, 方解石/calcite") == {"k_feldspar", "calcite"}
    for term in LEX.terms:
        for name in term.zh + term.en:
            assert term.id in LEX.find(name), (term.id, name)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("未见黄铁矿、锆石，见石英", {"quartz"}),
        ("未见黄铁矿，石英约占40%", {"quartz"}),
        ("无色石英", {"quartz"}),
        ("碎屑无明显定向性", set()),
        ("不含方解石和白云石，含石英", {"quartz"}),
        ("长石具粘土化，未见绢云母化。", {"feldspar", "argillization"}),
        ("No pyrite or zircon; quartz present.", {"quartz"}),
        ("Grains show no obvious preferred orientation.", set()),
        ("quartz, no K-feldspar", {"quartz"}),
        ("randomly oriented quartz grains", {"quartz"}),
    ],
)
def test_negated_terms_do_not_count(text: str, expected: set[str]) -> None:
    assert LEX.find(text) == expected
    assert expected <= LEX.find(text, include_negated=True)


def test_find_spans_positions() -> None:
    spans = LEX.find_spans("长石具粘土化")
    assert [(s.start, s.end, s.term_id, s.negated) for s in spans] == [
        (0, 2, "feldspar", False),
        (3, 6, "argillization", False),
    ]


def test_is_chinese() -> None:
    assert is_chinese(REPORT_ZH)
    assert not is_chinese("Quartz dominates the framework.")
    assert is_chinese("石英约占45%, K-feldspar 少见")


def test_bad_lexicon_file(tmp_path) -> None:
    bad = tmp_path / "lex.yaml"
    bad.write_text("terms:\n  - {id: a, kind: mineral, zh: [甲]}\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match="missing facet, en"):
        load_lexicon(bad)
