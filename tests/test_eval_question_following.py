"""Question-following scores on hand-made answers with known results, and their report section."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from thinchat.domain.lexicon import load_lexicon
from thinchat.eval.question_following import (
    Probe,
    add_followup_scores,
    build_probes,
    parse_yes_no,
    score_probes,
    which_reading,
)
from thinchat.eval.report import render_markdown, write_report
from thinchat.evalsample import EvalSample

EN = "Framework grains: quartz (about 55%), K-feldspar (about 12%). Calcite (about 9%) forms poikilotopic cement."
EN2 = "Dolomite (about 80%) forms a fine crystalline mosaic. Platy minerals: muscovite (about 2%)."
ZH = "方解石约占70%，呈亮晶镶嵌状。副矿物见黄铁矿少量。"
ZH2 = "碎屑成分：石英约占60%，斜长石约占10%。泥质约占20%。"


def _sample(sid: str, text: str, lang: str) -> EvalSample:
    return EvalSample(sid, [Path(f"{sid}.png")], [f"{sid}.png"], "<image>\nDescribe.", [text], lang, [sid])


@pytest.mark.parametrize(
    ("answer", "parsed"),
    [
        ("Yes. Calcite forms cement.", "yes"),
        ("yes", "yes"),
        ("No, there is no pyrite in this slide.", "no"),
        ("Not present.", "no"),
        ("有。方解石约占9%。", "yes"),
        ("是的，见到方解石。", "yes"),
        ("没有。薄片中未见黄铁矿。", "no"),
        ("未见黄铁矿。", "no"),
        ("否", "no"),
        ("Framework grains: quartz (about 55%).", None),
        ("碎屑成分：石英约占60%。", None),
        ("", None),
    ],
)
def test_parse_yes_no(answer: str, parsed: str | None) -> None:
    assert parse_yes_no(answer) == parsed


def _probe(
    sample: EvalSample,
    index: int,
    kind: str,
    expected: str,
    options: tuple[str, ...] = (),
    term: str | None = None,
    wording: str = "q",
) -> Probe:
    return Probe(sample, index, kind, "q", expected, options, term, wording)


def test_scores_on_hand_made_answers() -> None:
    en, zh = _sample("a", EN, "en"), _sample("b", ZH, "zh")
    probes = [
        _probe(en, 0, "presence", "yes"),
        _probe(en, 1, "presence", "yes"),
        _probe(en, 2, "presence", "no"),
        _probe(en, 3, "presence", "no"),
        _probe(en, 4, "which", "calcite", ("dolomite", "calcite")),
        _probe(zh, 0, "presence", "yes"),
        _probe(zh, 1, "presence", "no"),
        _probe(zh, 2, "which", "pyrite", ("pyrite", "zircon")),
    ]
    answers = {
        "a#q0": "Yes. Quartz.",
        "a#q1": "No.",  # wrong
        "a#q2": "No, there is none.",
        "a#q3": "Framework grains: quartz (about 55%).",  # not in the form asked (and so not right)
        "a#q4": "Calcite, not dolomite.",
        "b#q0": "有。",
        "b#q1": "有。",  # wrong
        "b#q2": "锆石。",  # wrong option
    }
    scores = score_probes(probes, answers)
    en_s, zh_s, all_s = scores["en"], scores["zh"], scores["all"]
    assert en_s["yes_accuracy"] == 0.5 and en_s["no_accuracy"] == 0.5 and en_s["yes_no_accuracy"] == 0.5
    assert en_s["answer_form"] == 0.75 and en_s["which_accuracy"] == 1.0
    assert zh_s["yes_no_accuracy"] == 0.5 and zh_s["answer_form"] == 1.0 and zh_s["which_accuracy"] == 0.0
    assert all_s["yes_accuracy"] == 2 / 3 and all_s["no_accuracy"] == 1 / 3
    assert all_s["yes_no_accuracy"] == pytest.approx(0.5)
    assert all_s["answer_form"] == pytest.approx(5 / 6) and all_s["which_accuracy"] == 0.5
    assert (all_s["n_yes"], all_s["n_no"], all_s["n_which"]) == (3, 3, 2)
    assert [r["parsed"] for r in scores["records"]][:5] == ["yes", "no", "no", None, "calcite"]


def test_always_yes_scores_chance() -> None:
    samples = [
        _sample("a", EN, "en"),
        _sample("b", EN2, "en"),
        _sample("c", ZH, "zh"),
        _sample("d", ZH2, "zh"),
    ]
    probes = build_probes(samples, presence=4, which=1)
    yes = [p for p in probes if p.expected == "yes"]
    assert len(yes) == len([p for p in probes if p.expected == "no"]) > 0
    scores = score_probes(probes, {p.id: "Yes." for p in probes})
    assert scores["all"]["yes_no_accuracy"] == 0.5 and scores["all"]["answer_form"] == 1.0
    lex = load_lexicon()
    right = {p.id: f"{p.expected}." if p.type == "presence" else lex.name(p.expected, "zh") for p in probes}
    perfect = score_probes(probes, right)
    assert perfect["all"]["yes_no_accuracy"] == 1.0 and perfect["all"]["which_accuracy"] == 1.0
    assert build_probes(samples, presence=4, which=1) == probes  # deterministic


def test_probe_keeps_the_kind_of_sample() -> None:
    # A ClipCap test sample carries its stored embedding instead of image files: the probe must too.
    from thinchat.clipcap.evaldata import EmbeddingEvalSample

    stored = EmbeddingEvalSample("e", [], ["k1"], "<image>\nDescribe.", [EN], "en", ["e"], embeddings=["E"])
    probe = build_probes([stored, _sample("a", EN2, "en")])[0]
    sample = probe.as_sample()
    assert isinstance(sample, EmbeddingEvalSample) and sample.embeddings == ["E"] and sample.images == []
    assert sample.question.startswith("<image>\n") and sample.question.count("<image>") == 1
    two = _sample("b", EN, "en")
    two.question = "<image>\n<image>\nDescribe."
    assert build_probes([two, _sample("a", EN2, "en")])[0].as_sample().question.count("<image>") == 2


def test_probes_use_phrasings_never_trained() -> None:
    import re

    from thinchat.domain.questions import load_questions

    grounded = load_questions().grounded
    samples = [
        _sample("a", EN, "en"),
        _sample("b", EN2, "en"),
        _sample("c", ZH, "zh"),
        _sample("d", ZH2, "zh"),
    ]

    def patterns(keys: tuple[str, ...]) -> list[re.Pattern[str]]:
        return [
            re.compile("^" + re.sub(r"\\\{\w+\\\}", ".+", re.escape(q)) + "$")
            for k in keys
            for lang in ("zh", "en")
            for q in grounded[k][lang]
        ]

    trained = patterns(("presence", "presence_alteration", "which"))
    held = patterns(("probe_presence", "probe_presence_alteration", "probe_which"))
    probes = build_probes(samples)
    assert probes
    for probe in probes:
        assert any(p.match(probe.question) for p in held)
        assert not any(p.match(probe.question) for p in trained), probe.question
    assert any(p.match(q.question) for q in build_probes(samples, held_out_questions=False) for p in trained)


def test_report_section_and_chart(tmp_path: Path) -> None:
    samples = [_sample("a", EN, "en"), _sample("b", EN2, "en")]
    probes = build_probes(samples)
    base = score_probes(probes, {p.id: "Framework grains: quartz." for p in probes})
    tuned = score_probes(probes, {p.id: "Yes." for p in probes})
    following = {
        n: {k: v for k, v in s.items() if k != "records"} for n, s in (("base", base), ("ft", tuned))
    }
    report = {
        "checkpoints": {"base": "b", "ft": "f"},
        "counts": {"scored": 2, "skipped": 0, "references": 2, "by_language": {"en": 2}},
        "metrics": {},
        "domain": {
            n: {
                "micro": {"precision": 0, "recall": 0, "f1": 0},
                "macro": {"f1": 0, "n_samples": 0},
                "proportions": {"mae": None, "n_matched": 0, "n_missing": 0, "n_extra": 0, "n_samples": 0},
                "n_empty_answers": 0,
                "kinds": ["mineral"],
                "n_no_reference_terms": 0,
            }
            for n in ("base", "ft")
        },
        "signatures": {},
        "tokenization": "t",
        "meteor_variant": "m",
        "skipped": [],
        "question_following": following,
    }
    md = render_markdown(report)
    assert "## Question following" in md
    assert "| yes/no accuracy (balanced), asked directly | 0.000 | 0.500 |" in md
    assert "| answered in the form asked | 0.000 | 1.000 |" in md
    assert "| yes/no accuracy, looking first" not in md  # not asked: no empty rows
    right = {p.id: f"{p.expected}." for p in probes}
    for name, scores in (("base", base), ("ft", tuned)):
        add_followup_scores(scores, probes, right if name == "ft" else {p.id: "No." for p in probes})
        following[name] = {k: v for k, v in scores.items() if k != "records"}
    md = render_markdown(report)
    assert "| yes/no accuracy, looking first (as every interface answers) | 0.500 | 1.000 |" in md
    assert "agreeing with its own description" not in md  # not computed without the descriptions
    # Per wording: the tuned model says "yes" to every question directly (same answer), and is right
    # looking first; the base model answers neither way directly (0.00 said "yes", not "same").
    wording = next(p.wording for p in probes if p.type == "presence")
    row = next(line for line in md.splitlines() if line.startswith(f"| {wording} |"))
    assert row.split(" | ")[1:3] == ["0.000 (0.00)", "0.500 (1.00 same)"]
    assert "| wording: balanced (said 'yes') | base | ft | base, looking first | ft, looking first |" in md
    paths = write_report(report, {}, tmp_path, {"ft": tuned["records"]})
    assert paths["question_chart"].stat().st_size > 1000
    rows = [json.loads(line) for line in paths["questions:ft"].read_text(encoding="utf-8").splitlines()]
    assert len(rows) == len(probes) and rows[0]["answer"] == "Yes."
    assert (
        rows[0]["followup_answer"] == f"{probes[0].expected}."
        and rows[0]["followup_parsed"] == probes[0].expected
    )


def test_a_probe_is_asked_with_the_slides_images_first() -> None:
    sample = _sample("a", EN, "en")
    sample.question = "<image>\n<image>\nDescribe."
    probe = build_probes([sample, _sample("b", EN2, "en")])[0]
    assert probe.as_sample().images == sample.images
    assert probe.as_sample().conversation() == [
        {"from": "human", "value": "<image>\n<image>\n" + probe.question}
    ]
    assert probe.wording and probe.wording.format(term="X") != probe.wording  # the template it came from


def test_followup_scores_sit_beside_the_scores_alone() -> None:
    en, zh = _sample("a", EN, "en"), _sample("b", ZH, "zh")
    probes = [
        _probe(en, 0, "presence", "yes"),
        _probe(en, 1, "presence", "no"),
        _probe(en, 2, "which", "calcite", ("dolomite", "calcite")),
        _probe(zh, 0, "presence", "yes"),
        _probe(zh, 1, "presence", "no"),
    ]
    alone = {"a#q0": "No.", "a#q1": "No.", "a#q2": "Dolomite.", "b#q0": "有。", "b#q1": "有。"}
    after = {"a#q0": "Yes.", "a#q1": "No.", "a#q2": "Calcite.", "b#q0": "有。", "b#q1": "没有。"}
    scores = add_followup_scores(score_probes(probes, alone), probes, after)
    assert scores["en"]["yes_no_accuracy"] == 0.5 and scores["en"]["followup_yes_no_accuracy"] == 1.0
    assert scores["en"]["which_accuracy"] == 0.0 and scores["en"]["followup_which_accuracy"] == 1.0
    assert scores["zh"]["yes_no_accuracy"] == 0.5 and scores["zh"]["followup_no_accuracy"] == 1.0
    assert scores["all"]["followup_yes_no_accuracy"] == 1.0 and scores["all"]["followup_answer_form"] == 1.0
    assert [r["followup_parsed"] for r in scores["records"]] == ["yes", "no", "calcite", "yes", "no"]


def test_followups_are_compared_with_the_models_own_description() -> None:
    en, zh = _sample("a", EN, "en"), _sample("b", ZH, "zh")
    probes = [
        _probe(en, 0, "presence", "yes", term="calcite"),
        _probe(en, 1, "presence", "yes", term="k_feldspar"),
        _probe(en, 2, "presence", "no", term="dolomite"),
        _probe(en, 3, "presence", "no", term="pyrite"),
        _probe(en, 4, "which", "calcite", ("dolomite", "calcite"), term="calcite"),
        _probe(zh, 0, "presence", "yes", term="calcite"),
        _probe(zh, 1, "presence", "no", term="quartz"),
    ]
    # The en description names calcite and dolomite (wrongly) but not K-feldspar; the zh one says
    # calcite is absent, which is not naming it.
    descriptions = {"a": "Calcite (about 9%) and dolomite (about 5%).", "b": "石英约占60%。未见方解石。"}
    after = {
        "a#q0": "Yes.",  # agrees (named)
        "a#q1": "Yes.",  # disagrees: not named
        "a#q2": "No.",  # disagrees: named
        "a#q3": "No.",  # agrees
        "a#q4": "Calcite.",
        "b#q0": "有。",  # disagrees: stated absent
        "b#q1": "我不确定。",  # no yes/no: not counted for agreement
    }
    alone = dict.fromkeys(after, "No.")
    scores = add_followup_scores(score_probes(probes, alone), probes, after, descriptions=descriptions)
    # Read off the en description: calcite yes (right), K-feldspar no (wrong), dolomite yes (wrong),
    # pyrite no (right): 0.5 on "yes", 0.5 on "no".
    assert scores["en"]["description_yes_no_accuracy"] == 0.5
    assert scores["en"]["followup_consistency"] == 0.5
    # zh: calcite "no" off the description (wrong), quartz "yes" (wrong).
    assert scores["zh"]["description_yes_no_accuracy"] == 0.0
    assert scores["zh"]["followup_consistency"] == 0.0
    assert scores["all"]["followup_consistency"] == 2 / 5
    # Without descriptions the keys are absent, not zero.
    plain = add_followup_scores(score_probes(probes, alone), probes, after)
    assert "followup_consistency" not in plain["all"]


def test_yes_answers_by_stated_share_and_by_term() -> None:
    en, en2, zh = _sample("a", EN, "en"), _sample("b", EN2, "en"), _sample("c", ZH, "zh")
    probes = [
        _probe(en, 0, "presence", "yes", term="quartz"),  # about 55%
        _probe(en, 1, "presence", "yes", term="calcite"),  # about 9%
        _probe(en, 2, "presence", "no", term="zircon"),
        _probe(en2, 0, "presence", "yes", term="muscovite"),  # about 2%
        _probe(zh, 0, "presence", "yes", term="pyrite"),  # 少量: no percentage
        _probe(zh, 1, "presence", "no", term="dolomite"),
    ]
    answers = {"a#q0": "Yes.", "a#q1": "No.", "a#q2": "No.", "b#q0": "No.", "c#q0": "有。", "c#q1": "有。"}
    scores = score_probes(probes, answers)
    assert scores["all"]["yes_by_share"] == {
        ">=10%": {"accuracy": 1.0, "n": 1},
        "3-10%": {"accuracy": 0.0, "n": 1},
        "<3%": {"accuracy": 0.0, "n": 1},
        "no % stated": {"accuracy": 1.0, "n": 1},
    }
    assert list(scores["en"]["yes_by_share"]) == [">=10%", "3-10%", "<3%"]
    assert scores["all"]["presence_by_term"] == {
        "calcite": {"yes": [0, 1], "no": [0, 0]},
        "dolomite": {"yes": [0, 0], "no": [0, 1]},
        "muscovite": {"yes": [0, 1], "no": [0, 0]},
        "pyrite": {"yes": [1, 1], "no": [0, 0]},
        "quartz": {"yes": [1, 1], "no": [0, 0]},
        "zircon": {"yes": [0, 0], "no": [1, 1]},
    }
    assert [r["term"] for r in scores["records"]][:3] == ["quartz", "calcite", "zircon"]
    after = {**answers, "a#q1": "Yes.", "b#q0": "Yes."}
    add_followup_scores(scores, probes, after)
    assert scores["en"]["followup_yes_by_share"]["3-10%"] == {"accuracy": 1.0, "n": 1}
    assert scores["en"]["followup_presence_by_term"]["muscovite"]["yes"] == [1, 1]
    from thinchat.eval.following_report import _presence_detail_lines

    lines = _presence_detail_lines({"ft": scores["en"]}, asked=True)
    assert "| 'yes' questions by the term's share in the report | ft | ft, looking first |" in lines
    assert "| 3-10% | 0.000 (1) | 1.000 (1) |" in lines
    assert "| term: right / asked | ft, 'yes' | ft, 'no' |" in lines
    assert "| quartz | 1/1 | - |" in lines and "| zircon | - | 1/1 |" in lines


def test_build_probes_name_the_term_asked() -> None:
    lex = load_lexicon()
    samples = [_sample("a", EN, "en"), _sample("b", EN2, "en")]
    for probe in build_probes(samples):
        assert probe.term is not None
        if probe.type == "presence":
            assert lex.name(probe.term, "en").lower() in probe.question.lower()


def test_build_probes_ask_several_which_of_questions_per_slide() -> None:
    samples = [_sample("a", EN, "en"), _sample("b", EN2, "en")]
    default = build_probes(samples)
    one = build_probes(samples, which=1)
    which = [p for p in default if p.type == "which"]
    assert len(which) > len([p for p in one if p.type == "which"])
    assert all(p.expected in p.options and len(p.options) >= 2 for p in which)
    assert len({(p.sample.id, p.expected) for p in which}) == len(which)  # never the same term twice
    # More which-of questions leave the presence questions (drawn first) as they were.
    assert [p for p in default if p.type == "presence"] == [p for p in one if p.type == "presence"]


def test_which_reading_uses_the_first_which_of_question_that_offered_the_term() -> None:
    en = _sample("a", EN, "en")
    probes = [
        _probe(en, 0, "presence", "yes", term="calcite"),
        _probe(en, 1, "presence", "yes", term="quartz"),
        _probe(en, 2, "presence", "no", term="pyrite"),
        _probe(en, 3, "which", "calcite", ("dolomite", "calcite")),
        _probe(en, 4, "which", "quartz", ("quartz", "calcite")),
    ]
    answers = {"a#q3": "Dolomite.", "a#q4": "Quartz."}
    # calcite: q3 offered it first and picked dolomite (no), though q4 picked quartz over it too;
    # quartz: only q4 offered it (yes); pyrite: offered by none, no reading.
    assert which_reading(probes, answers, load_lexicon()) == {"a#q0": "no", "a#q1": "yes"}


def test_answers_asked_directly_are_held_against_the_models_own_reading() -> None:
    en, en2 = _sample("a", EN, "en"), _sample("b", EN2, "en")
    probes = [
        _probe(en, 0, "presence", "yes", term="calcite"),
        _probe(en, 1, "presence", "no", term="dolomite"),
        _probe(en, 2, "presence", "yes", term="quartz"),
        _probe(en, 3, "which", "calcite", ("dolomite", "calcite")),
        _probe(en2, 0, "presence", "yes", term="dolomite"),
        _probe(en2, 1, "presence", "no", term="pyrite"),
    ]
    descriptions = {"a": "Quartz (about 55%). Calcite (about 9%).", "b": "Dolomite mosaic."}
    # Directly: calcite "no" (the description names it: disagrees), dolomite "no" (agrees), quartz
    # "yes" (agrees); slide b: dolomite "no" (disagrees), pyrite unparsed (not counted).
    alone = {"a#q0": "No.", "a#q1": "No.", "a#q2": "Yes.", "a#q3": "Dolomite.", "b#q0": "No.", "b#q1": "?"}
    # Looking first: every answer follows the description.
    after = {"a#q0": "Yes.", "a#q1": "No.", "a#q2": "Yes.", "a#q3": "Calcite.", "b#q0": "Yes.", "b#q1": "No."}
    scores = add_followup_scores(score_probes(probes, alone), probes, after, descriptions=descriptions)
    assert scores["en"]["alone_consistency"] == 2 / 4
    assert scores["en"]["followup_consistency"] == 1.0
    # The which-of question offered dolomite and calcite: directly it picked dolomite, so its own
    # reading is calcite "no" (the direct "No." agrees) and dolomite "yes" (the direct "No." disagrees).
    assert scores["en"]["alone_which_consistency"] == 1 / 2
    # Looking first it picked calcite: calcite "yes" and dolomite "no" both agree.
    assert scores["en"]["followup_which_consistency"] == 1.0
    assert scores["en"]["description_yes_no_accuracy"] == 1.0


def test_a_wording_answered_the_same_whatever_the_slide_is_marked() -> None:
    samples = [_sample(f"s{k}", EN, "en") for k in range(10)]
    probes = [_probe(s, 0, "presence", "yes", term="calcite", wording="Is {term} here?") for s in samples[:5]]
    probes += [_probe(s, 0, "presence", "no", term="pyrite", wording="Is {term} here?") for s in samples[5:]]
    probes += [_probe(s, 1, "presence", "yes", term="quartz", wording="Any {term}?") for s in samples[:5]]
    probes += [_probe(s, 1, "presence", "no", term="zircon", wording="Any {term}?") for s in samples[5:]]
    answers = {p.id: "No." for p in probes if p.wording == "Is {term} here?"}
    answers.update(
        {p.id: "Yes." if p.expected == "yes" else "No." for p in probes if p.wording == "Any {term}?"}
    )
    answers["s0#q0"] = "Yes."  # one of ten: still "no" for 90% of its slides
    by_wording = score_probes(probes, answers)["en"]["by_wording"]
    assert by_wording["Is {term} here?"] == {
        "yes_no_accuracy": 0.6,
        "said_yes": 0.1,
        "said_no": 0.9,
        "n": 10,
        "same_answer": True,
    }
    assert by_wording["Any {term}?"]["yes_no_accuracy"] == 1.0
    assert by_wording["Any {term}?"]["same_answer"] is False
