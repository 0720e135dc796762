"""Caption metrics against hand-computed values (English, Chinese, multi-reference, naive-tokenization trap)."""

from __future__ import annotations

import math
import shutil

import pytest
from pycocoevalcap.bleu.bleu import Bleu

from thinchat.domain.language import language_of
from thinchat.errors import DataFormatError
from thinchat.eval.meteor import METEOR_15, METEOR_NLTK, MeteorScorer
from thinchat.eval.metrics import score_corpus
from thinchat.eval.tokenize import tokenize


def test_tokenize_chinese_per_character_ascii_runs_whole():
    assert tokenize("石英约占45%，粒径0.25mm，含SiO2。") == [
        "石", "英", "约", "占", "45", "%", "粒", "径", "0.25mm", "含", "sio2",
    ]  # fmt: skip


def test_tokenize_english_words_lowercased_punctuation_removed():
    assert tokenize("Quartz (about 45%), K-feldspar; 0.25 mm.") == [
        "quartz", "about", "45", "%", "k-feldspar", "0.25", "mm",
    ]  # fmt: skip
    assert language_of("Quartz 石英") == "zh"
    assert language_of("Quartz") == "en"


def test_english_bleu1_rouge_gleu_hand_computed():
    # hyp: the the cat (3 tokens); ref: the cat is here (4 tokens).
    # BLEU-1: clipped matches the=min(2,1)=1, cat=1 -> 2/3; BP = exp(1 - 4/3) -> 2/3 * e^(-1/3) = 0.47766
    # ROUGE-L: LCS = "the cat" = 2, P = 2/3, R = 2/4; F = (1+1.2^2) P R / (R + 1.2^2 P) = 0.55708
    # GLEU: hyp n-grams 3+2+1 = 6, ref n-grams 4+3+2+1 = 10, matches the,cat,"the cat" = 3
    #       -> min(3/6, 3/10) = 0.3
    out = score_corpus({"s": "The the cat."}, {"s": ["the cat is here"]}, "en")["scores"]
    assert out["BLEU-1"] == pytest.approx(100 * (2 / 3) * math.exp(-1 / 3), abs=1e-6)
    p, r = 2 / 3, 2 / 4
    assert out["ROUGE-L"] == pytest.approx(100 * 2.44 * p * r / (r + 1.44 * p), abs=1e-9)
    assert out["GLEU"] == pytest.approx(30.0)


def test_bleu4_brevity_penalty_matches_sacrebleu_on_chinese():
    # hyp 甲乙丙丁 (4 chars) is a prefix of ref 甲乙丙丁戊 (5): every n-gram precision is 1,
    # so BLEU-4 = BP = exp(1 - 5/4) = 0.77880 for both pycocoevalcap (our tokens) and sacreBLEU (tok zh).
    res = score_corpus({"s": "甲乙丙丁"}, {"s": ["甲乙丙丁戊"]}, "zh")
    expected = 100 * math.exp(-0.25)
    assert res["scores"]["BLEU-4"] == pytest.approx(expected, abs=1e-5)
    assert res["scores"]["sacreBLEU"] == pytest.approx(expected, abs=1e-5)
    assert "tok:zh" in res["signatures"]["sacreBLEU"]


def test_chinese_case_and_naive_whitespace_tokenization_gives_zero():
    hyp, ref = "石英约占45%。", "石英含量约45%"
    # Naive: each string is one whitespace "word" and they differ -> BLEU-1 is 0.
    naive, _ = Bleu(4).compute_score({"s": [ref]}, {"s": [hyp]}, verbose=0)
    assert naive[0] == pytest.approx(0.0, abs=1e-9)
    # Ours: hyp 石 英 约 占 45 % (6), ref 石 英 含 量 约 45 % (7). Matches 石 英 约 45 % = 5.
    # BLEU-1 = 5/6 * exp(1 - 7/6); ROUGE-L: LCS = 5, P = 5/6, R = 5/7.
    out = score_corpus({"s": hyp}, {"s": [ref]}, "zh")["scores"]
    assert out["BLEU-1"] == pytest.approx(100 * 5 / 6 * math.exp(-1 / 6), abs=1e-6)
    p, r = 5 / 6, 5 / 7
    assert out["ROUGE-L"] == pytest.approx(100 * 2.44 * p * r / (r + 1.44 * p), abs=1e-9)
    assert out["chrF"] > 0 and out["sacreBLEU"] > 0


def test_multi_reference_clipping_and_closest_length():
    # hyp a b c d; refs "a b x y" (4) and "c d z" (3). Unigrams: each hyp token is in some ref -> 4/4.
    # Bigrams: ab (ref1), cd (ref2), bc (none) -> 2/3. Closest ref length 4 -> BP 1.
    # BLEU-2 = sqrt(1 * 2/3). ROUGE-L takes max P (2/4) and max R (2/3 from ref2) separately.
    out = score_corpus({"s": "a b c d"}, {"s": ["a b x y", "c d z"]}, "en")["scores"]
    assert out["BLEU-1"] == pytest.approx(100.0, abs=1e-6)
    assert out["BLEU-2"] == pytest.approx(100 * math.sqrt(2 / 3), abs=1e-6)
    p, r = 2 / 4, 2 / 3
    assert out["ROUGE-L"] == pytest.approx(100 * 2.44 * p * r / (r + 1.44 * p), abs=1e-9)


def test_ragged_reference_counts_reach_sacrebleu():
    res = score_corpus(
        {"a": "甲乙丙丁", "b": "戊己庚辛"}, {"a": ["甲乙丙丁"], "b": ["子丑", "戊己庚辛"]}, "zh"
    )
    assert res["signatures"]["sacreBLEU"].startswith("nrefs:var")
    assert res["scores"]["sacreBLEU"] == pytest.approx(100.0)


def test_cider_d_identical_captions_disjoint_vocabulary():
    # Two images with disjoint vocabularies: every n-gram has idf log(2/1); hyp == ref gives cosine 1
    # for n = 1..4 and no length penalty, so CIDEr-D = 10 * mean(1, 1, 1, 1) = 10 -> 1000 on our scale.
    hyps = {"a": "甲 乙 丙 丁", "b": "quartz grains are subrounded"}
    res = score_corpus(hyps, {k: [v] for k, v in hyps.items()}, "en")
    assert res["scores"]["CIDEr-D"] == pytest.approx(1000.0, abs=1e-6)
    assert res["per_sample"]["a"]["CIDEr-D"] == pytest.approx(1000.0, abs=1e-6)


def test_bad_references_raise_clear_errors():
    with pytest.raises(DataFormatError, match="empty reference set"):
        score_corpus({}, {}, "en")
    with pytest.raises(DataFormatError, match="do not match"):
        score_corpus({"a": "x"}, {"b": ["x"]}, "en")
    with pytest.raises(DataFormatError, match="non-empty"):
        score_corpus({"a": "x"}, {"a": [""]}, "en")


def test_meteor_nltk_fallback_is_labelled():
    scorer = MeteorScorer("nltk")
    assert scorer.variant == METEOR_NLTK and "NOT comparable" in scorer.variant
    _, each = scorer.score({"a": "the cat sat", "b": "x"}, {"a": ["the cat sat"], "b": ["y"]})
    assert each[1] == 0.0 and each[0] > 0.9


@pytest.mark.slow  # starts a JVM: ~10 CPU-seconds loading METEOR's paraphrase tables
@pytest.mark.skipif(shutil.which("java") is None, reason="METEOR 1.5 needs java")
def test_meteor_15_hand_computed():
    # 石 英 约 占 vs 长 石 多 见: one exact match of 4 tokens: P = R = 1/4, Fmean = 1/4;
    # one chunk per match -> frag = 1, penalty = gamma * frag^beta = 0.6 (en parameters) -> 0.25 * 0.4 = 0.1
    scorer = MeteorScorer("java")
    try:
        _, each = scorer.score({"a": "石 英 约 占", "b": "石 英"}, {"a": ["长 石 多 见"], "b": ["石 英"]})
    finally:
        scorer.close()
    assert scorer.variant == METEOR_15
    assert each[0] == pytest.approx(0.1, abs=1e-6)
    assert each[1] == pytest.approx(1.0, abs=1e-6)
