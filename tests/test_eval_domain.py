"""Domain score: mineral/alteration term P/R/F1 through the bilingual lexicon, and proportion error."""

from __future__ import annotations

import pytest

from thinchat.domain.lexicon import Lexicon, Term, load_lexicon
from thinchat.eval.domain import domain_scores, stated_proportions


@pytest.fixture
def small_lexicon() -> Lexicon:
    return Lexicon(
        [
            Term("quartz", ["石英"], ["quartz"], "mineral", "composition"),
            Term("feldspar", ["长石"], ["feldspar"], "mineral", "composition"),
            Term("zircon", ["锆石"], ["zircon"], "mineral", "accessory"),
            Term("sericitization", ["绢云母化"], ["sericitization"], "alteration", "matrix"),
            Term("sericite", ["绢云母"], ["sericite"], "mineral", "matrix"),
            Term("undulose", ["波状消光"], ["undulose extinction"], "texture", "fabric"),
        ]
    )


def test_hand_computed_micro_and_macro(small_lexicon):
    hyps = {"a": "石英、长石，绢云母化，波状消光", "b": "Quartz only.", "c": "长石"}
    refs = {"a": ["quartz and zircon; sericitization"], "b": ["石英，锆石"], "c": ["无矿物描述"]}
    out = domain_scores(hyps, refs, small_lexicon)
    # a: pred {quartz, feldspar, sericitization} (texture not scored), gold {quartz, zircon, sericitization}
    #    tp 2 -> P 2/3, R 2/3, F 2/3.   b: pred {quartz}, gold {quartz, zircon} -> P 1, R 1/2, F 2/3.
    # c: gold empty -> excluded from macro, but its prediction counts in micro precision.
    # micro: tp 3, predicted 3 + 1 + 1 = 5, gold 3 + 2 = 5 -> P = R = F = 60
    assert out["micro"] == pytest.approx({"precision": 60.0, "recall": 60.0, "f1": 60.0})
    assert out["macro"]["n_samples"] == 2 and out["n_no_reference_terms"] == 1
    assert out["macro"]["precision"] == pytest.approx(100 * (2 / 3 + 1) / 2)
    assert out["macro"]["recall"] == pytest.approx(100 * (2 / 3 + 1 / 2) / 2)
    assert out["macro"]["f1"] == pytest.approx(100 * 2 / 3)
    assert out["per_sample"]["a"]["answer_terms"] == ["feldspar", "quartz", "sericitization"]


def test_chinese_answer_matches_english_reference_and_multi_reference_union(small_lexicon):
    out = domain_scores({"x": "可见石英与锆石"}, {"x": ["quartz", "zircon is rare"]}, small_lexicon)
    assert out["micro"]["f1"] == pytest.approx(100.0)


def test_stated_proportions_zh_en_ranges(small_lexicon):
    assert stated_proportions("石英约占45%，长石20-25%，少见锆石。", small_lexicon) == {
        "quartz": 45.0,
        "feldspar": 22.5,
    }
    assert stated_proportions("quartz about 45%, feldspar (10%) and 5% zircon", small_lexicon) == {
        "quartz": 45.0,
        "feldspar": 10.0,
        "zircon": 5.0,
    }


def test_proportion_mae_counts_missing_and_extra(small_lexicon):
    hyps = {"a": "石英约占40%，长石少见", "b": "quartz 30%, zircon 2%"}
    refs = {"a": ["quartz about 45%, feldspar 20%"], "b": ["石英约占36%"]}
    prop = domain_scores(hyps, refs, small_lexicon)["proportions"]
    # a: quartz |40-45| = 5, feldspar stated in ref only -> missing. b: quartz |30-36| = 6, zircon extra.
    assert prop == {"n_samples": 2, "mae": pytest.approx(5.5), "n_matched": 2, "n_missing": 1, "n_extra": 1}


def test_no_proportions_gives_none():
    out = domain_scores({"a": "quartz"}, {"a": ["quartz and sericite"]}, load_lexicon())
    assert out["proportions"]["mae"] is None and out["proportions"]["n_samples"] == 0


def test_real_lexicon_bilingual_and_longest_match():
    lex = load_lexicon()
    out = domain_scores(
        {"a": "泥质大部分已绢云母化，长石具粘土化，少见锆石、电气石。"},
        {"a": ["Argillaceous matrix mostly sericitized; feldspar argillized; rare zircon and tourmaline."]},
        lex,
    )
    sample = out["per_sample"]["a"]
    assert "sericitization" in sample["answer_terms"] and "sericite" not in sample["answer_terms"]
    assert {"zircon", "tourmaline", "feldspar"} <= set(sample["reference_terms"])
    assert out["micro"]["precision"] > 50


def test_synthetic_captions_proportions_parse_back_to_labels():
    """The synthetic set states proportions; parsing them back must agree with the labels (to rounding)."""
    from data_tools.report import caption
    from data_tools.synth import make_slide

    lex = load_lexicon()
    checked = 0
    for index in range(6):
        *_, labels = make_slide(0, index, 64)
        truth = {k: v for k, v in labels["proportions"].items() if k != "pore"}
        for lang in ("zh", "en"):
            stated = stated_proportions(caption(labels, lang), lex)
            assert set(stated) <= set(truth), (lang, stated, truth)
            for term, value in stated.items():
                assert abs(value - truth[term]) <= 1.0, (lang, term, value, truth[term])
                checked += 1
    assert checked >= 12
