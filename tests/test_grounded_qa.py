"""Follow-up turns from one generator: facet follow-ups, and grounded question-answer turns (balanced yes/no,
answers quoting the report, "no" terms truly absent), as ``data convert`` writes them."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_tools.convert import convert
from thinchat.domain.grounded_qa import ASK_KINDS, GroundedQA, QAOptions, TermPool
from thinchat.domain.lexicon import load_lexicon
from thinchat.domain.questions import load_questions
from thinchat.domain.reports import facet_answers
from thinchat.errors import DataFormatError

ZH = [
    "泥质约占20%，呈隐晶状，大部分已绢云母化。方解石约占8%，呈连晶状胶结。长石具粘土化。少见锆石、电气石。颗粒呈次圆状，分选好。",
    "碎屑成分：石英约占60%，斜长石约占10%。硅质约占5%，呈石英次生加大边围绕颗粒分布。未见黄铁矿。碎屑粒径0.10-0.30mm。",
    "白云石约占85%，呈细晶镶嵌状。孔隙约占6%，以溶孔为主。",
]
EN = [
    "Framework grains: quartz (about 55%), K-feldspar (about 12%). K-feldspar shows argillization. "
    "Calcite (about 9%) forms poikilotopic cement. Grain size is 0.10-0.25 mm, mainly fine sand, well sorted.",
    "Dolomite (about 80%) forms a fine crystalline mosaic. Accessory minerals: pyrite (trace). No chlorite.",
    "Quartz (about 70%) with siliceous cement (about 6%). Platy minerals: muscovite (about 2%), biotite (about 1%).",
]
NO_TERMS = "Nothing diagnostic can be seen in this photograph."


def _grounded(reports: list[str]) -> GroundedQA:
    lex = load_lexicon()
    return GroundedQA(lex, TermPool.from_reports(reports, lex), load_questions())


def _present(report: str) -> set[str]:
    lex = load_lexicon()
    return lex.with_broader(lex.find(report, kinds=set(ASK_KINDS)))


@pytest.mark.parametrize(("reports", "lang"), [(ZH, "zh"), (EN, "en")])
def test_presence_is_balanced_and_grounded(reports: list[str], lang: str) -> None:
    grounded = _grounded(reports)
    lex = load_lexicon()
    counts: Counter[str] = Counter()
    for k, report in enumerate(reports * 4):
        items = grounded.items(report, lang, random.Random(k), QAOptions(presence=4, which=1, attribute=1))
        for item in items:
            if item.type != "presence":
                continue
            counts[item.expected] += 1
            if item.expected == "yes":
                assert item.term in lex.find(report)
                quoted = item.answer.split("。", 1)[1] if lang == "zh" else item.answer.split(". ", 1)[1]
                assert (
                    quoted.rstrip("。.") and quoted.rstrip("。.").lower() in report.lower()
                )  # the report's words
            else:
                assert item.term not in _present(report)
                assert item.answer.startswith("没有" if lang == "zh" else "No")
                assert lex.name(item.term, lang) in item.question
    assert counts["yes"] == counts["no"]
    assert counts["yes"] >= len(reports) * 4


def test_stated_absence_gives_a_quoted_no() -> None:
    grounded = _grounded(ZH)
    found = False
    for k in range(40):
        for item in grounded.items(
            ZH[1], "zh", random.Random(k), QAOptions(presence=8, which=0, attribute=0)
        ):
            if item.term == "pyrite":
                assert item.expected == "no" and item.answer == "没有。未见黄铁矿。"
                found = True
    assert found


def test_broader_terms_are_never_expected_absent() -> None:
    # Plagioclase implies feldspar: "is there feldspar?" must never expect "no" for that report.
    lex = load_lexicon()
    grounded = _grounded([*EN, "Feldspar grains are altered. Mica flakes occur."])
    report = (
        "Framework grains: quartz (about 50%), plagioclase (about 20%). Platy minerals: biotite (about 3%)."
    )
    for k in range(50):
        for item in grounded.items(
            report, "en", random.Random(k), QAOptions(presence=6, which=1, attribute=0)
        ):
            assert not (item.expected == "no" and item.term in {"feldspar", "mica"})
            if item.type == "which":
                assert item.expected in item.options
                assert len(set(item.options) & lex.find(report)) == 1


def test_wide_terms_are_asked_where_they_are_the_reports_level_of_detail() -> None:
    # A grain set labelled "feldspar" (never plagioclase / K-feldspar): feldspar is a normal term there.
    grains = ["Feldspar grain, subangular.", "Quartz grain, rounded.", "Rock fragment, angular."]
    grounded = _grounded(grains)
    asked = Counter()
    for k in range(30):
        for report in grains:
            for item in grounded.items(
                report, "en", random.Random(k), QAOptions(presence=2, which=1, attribute=0)
            ):
                asked[(item.term, item.expected)] += 1
    assert asked[("feldspar", "yes")] > 0 and asked[("feldspar", "no")] > 0
    # Where the dataset also names the finer terms, a report naming only "feldspar" never gets a "no" about
    # plagioclase (it may be plagioclase), and "feldspar" itself is not asked.
    mixed = _grounded(["Feldspar is altered.", *EN, "Plagioclase (about 20%) and quartz."])
    for k in range(30):
        for item in mixed.items(
            "Feldspar is altered. Quartz (about 60%).", "en", random.Random(k), QAOptions()
        ):
            assert item.term != "feldspar"
            assert not (item.expected == "no" and item.term in {"plagioclase", "k_feldspar"})


def test_which_and_attribute_questions() -> None:
    grounded = _grounded(EN)
    lex = load_lexicon()
    seen: Counter[str] = Counter()
    for k in range(30):
        for item in grounded.items(
            EN[0], "en", random.Random(k), QAOptions(presence=0, which=1, attribute=1)
        ):
            seen[item.type] += 1
            if item.type == "which":
                assert 2 <= len(item.options) <= 3
                others = set(item.options) - {item.expected}
                assert not others & _present(EN[0])
                assert item.answer.lower().startswith(lex.name(item.expected, "en").lower())
            elif item.term == "quartz":
                assert item.answer == "Quartz makes up about 55% of the slide."
    assert seen["which"] == 30 and seen["attribute"] == 30


def test_same_seed_same_items_and_no_terms_no_items() -> None:
    grounded = _grounded(EN)
    a = grounded.items(EN[0], "en", random.Random(3), QAOptions())
    b = grounded.items(EN[0], "en", random.Random(3), QAOptions())
    assert a == b and a
    assert grounded.items(NO_TERMS, "en", random.Random(0), QAOptions()) == []


def test_negatives_off() -> None:
    grounded = _grounded(EN)
    items = grounded.items(
        EN[0], "en", random.Random(0), QAOptions(presence=3, which=0, attribute=0, negatives=False)
    )
    assert [i.expected for i in items] == ["yes", "yes", "yes"]


def _images(folder: Path, n: int) -> None:
    folder.mkdir()
    for i in range(1, n + 1):
        rng = np.random.default_rng(i)
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i:04d}.png")


def test_convert_with_qa_turns(tmp_path: Path) -> None:
    _images(tmp_path / "img", 7)
    rows = [*ZH, *EN, NO_TERMS]
    cap = tmp_path / "captions.tsv"
    cap.write_text("".join(f"{i:04d}\t{r}\n" for i, r in enumerate(rows, 1)), encoding="utf-8")
    out = tmp_path / "conv.json"
    summary = convert(cap, tmp_path / "img", out, qa_turns=6, seed=5)
    entries = json.loads(out.read_text(encoding="utf-8"))
    qa = summary["grounded_questions"]
    assert qa["reports_without_terms"] == 1
    assert qa["presence_yes"] == qa["presence_no"] > 0
    for entry, report in zip(entries, rows, strict=True):
        conv, types = entry["conversations"], entry["turn_types"]
        assert len(conv) == 2 * len(types) and types.count("describe") == 1
        assert conv[0]["value"].startswith("<image>\n")
        assert sum(t["value"].count("<image>") for t in conv) == 1
        assert conv[2 * types.index("describe") + 1]["value"] == report
    assert entries[-1]["turn_types"] == ["describe"]
    again = tmp_path / "again.json"
    convert(cap, tmp_path / "img", again, qa_turns=6, seed=5)
    assert again.read_text(encoding="utf-8") == out.read_text(encoding="utf-8")


def test_describe_first_opens_that_share_of_conversations(tmp_path: Path) -> None:
    _images(tmp_path / "img", 7)
    rows = [*ZH, *EN, NO_TERMS]
    cap = tmp_path / "captions.tsv"
    cap.write_text("".join(f"{i:04d}\t{r}\n" for i, r in enumerate(rows, 1)), encoding="utf-8")
    convert(cap, tmp_path / "img", tmp_path / "a.json", qa_turns=6, seed=5)
    shuffled = json.loads((tmp_path / "a.json").read_text(encoding="utf-8"))
    convert(cap, tmp_path / "img", tmp_path / "b.json", qa_turns=6, seed=5, describe_first=1.0)
    first = json.loads((tmp_path / "b.json").read_text(encoding="utf-8"))
    assert any(e["turn_types"][0] != "describe" for e in shuffled)
    for before, after, report in zip(shuffled, first, rows, strict=True):
        assert after["turn_types"][0] == "describe"
        assert after["conversations"][0]["value"].startswith("<image>\n")
        assert after["conversations"][1]["value"] == report
        # the same exchanges, only the description moved
        assert sorted(after["turn_types"]) == sorted(before["turn_types"])
    with pytest.raises(DataFormatError, match="--describe-first 1.5"):
        convert(cap, tmp_path / "img", tmp_path / "c.json", qa_turns=6, describe_first=1.5)


def test_facet_follow_ups_are_the_reports_clauses_per_facet() -> None:
    lex, pools = load_lexicon(), load_questions()
    follow_ups = GroundedQA(lex, TermPool(Counter()), pools)  # facets alone need no term pool
    items = follow_ups.items(EN[0], "en", random.Random(0), QAOptions.from_total(0, facets=True))
    assert [(i.type, i.term, i.answer) for i in items] == [
        ("facet", "composition", "Framework grains: quartz (about 55%), K-feldspar (about 12%)."),
        ("facet", "feldspar_alteration", "K-feldspar shows argillization."),
        ("facet", "carbonate", "Calcite (about 9%) forms poikilotopic cement."),
        ("facet", "grain_size", "Grain size is 0.10-0.25 mm, mainly fine sand, well sorted."),
    ]
    assert all(i.question in pools.facets[i.term]["en"] and i.wording == i.question for i in items)
    assert [i.answer for i in items] == list(facet_answers(EN[0], lex, "en").values())
    single = "Dolomite (about 85%) forms a fine crystalline mosaic."
    assert follow_ups.items(single, "en", random.Random(0), QAOptions.from_total(0, facets=True)) == []
    assert follow_ups.items(EN[0], "en", random.Random(0), QAOptions.from_total(0)) == []


def test_facets_come_first_and_leave_the_grounded_draws_alone() -> None:
    grounded = _grounded(EN)
    alone = grounded.items(EN[0], "en", random.Random(7), QAOptions.from_total(4))
    both = grounded.items(EN[0], "en", random.Random(7), QAOptions.from_total(4, facets=True))
    facets = [i for i in both if i.type == "facet"]
    assert both[: len(facets)] == facets and len(facets) == 4
    assert [i.type for i in both[len(facets) :]] == [i.type for i in alone]
    assert {i.type for i in alone} == {"presence", "which", "attribute"}


def test_convert_writes_the_generators_follow_ups(tmp_path: Path) -> None:
    """--multi-turn with --qa-turns: every turn after the description is one of the generator's items,
    drawn with the entry's seed, shuffled and typed; the facet answers are the report's own clauses."""
    _images(tmp_path / "img", 3)
    cap = tmp_path / "captions.tsv"
    cap.write_text("".join(f"{i:04d}\t{r}\n" for i, r in enumerate(EN, 1)), encoding="utf-8")
    summary = convert(cap, tmp_path / "img", tmp_path / "c.json", multi_turn=True, qa_turns=4, seed=5)
    entries = json.loads((tmp_path / "c.json").read_text(encoding="utf-8"))
    lex, pools = load_lexicon(), load_questions()
    follow_ups = GroundedQA(lex, TermPool.from_reports(EN, lex), pools)
    for entry, report in zip(entries, EN, strict=True):
        rng = random.Random(f"5\0{entry['id']}")
        describe = ("describe", rng.choice(pools.describe["en"]), report)
        items = follow_ups.items(report, "en", rng, QAOptions.from_total(4, facets=True))
        expected = [describe, *((i.type, i.question, i.answer) for i in items)]
        conv, types = entry["conversations"], entry["turn_types"]
        written = [
            (t, conv[2 * k]["value"].removeprefix("<image>\n"), conv[2 * k + 1]["value"])
            for k, t in enumerate(types)
        ]
        assert sorted(written) == sorted(expected)
        facets = facet_answers(report, lex, "en")
        assert sorted(a for t, _, a in written if t == "facet") == sorted(
            facets.values() if len(facets) > 1 else []
        )
    assert summary["grounded_questions"]["presence_yes"] == summary["grounded_questions"]["presence_no"] > 0
    assert "facet" not in summary["grounded_questions"]  # the summary counts grounded questions only


def test_user_lexicon_error_names_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "lexicon.yaml"
    bad.write_text(
        "terms:\n"
        "  - {id: quartz, kind: mineral, facet: composition, zh: [石英], en: [quartz]}\n"
        "  - {id: calcite, kind: mineral, zh: [方解石], en: [calcite]}\n",
        encoding="utf-8",
    )
    with pytest.raises(DataFormatError, match=r"lexicon\.yaml:3: terms\[1\]: missing facet"):
        load_lexicon(bad)
    unknown = tmp_path / "broader.yaml"
    unknown.write_text(
        "terms:\n  - {id: quartz, kind: mineral, facet: composition, zh: [石英], en: [quartz], broader: [silica]}\n",
        encoding="utf-8",
    )
    with pytest.raises(DataFormatError, match=r"broader\.yaml:2: .*unknown id\(s\) silica"):
        load_lexicon(unknown)


def test_vocabulary_digest_follows_the_bundled_files(tmp_path: Path, monkeypatch) -> None:
    from thinchat.domain import questions
    from thinchat.domain.grounded_qa import vocabulary_digest

    first = vocabulary_digest()
    assert first == vocabulary_digest() and len(first) == 16
    edited = tmp_path / "questions.yaml"
    edited.write_text(
        questions.DEFAULT_QUESTIONS.read_text(encoding="utf-8") + "# edited\n", encoding="utf-8"
    )
    monkeypatch.setattr(questions, "DEFAULT_QUESTIONS", edited)
    assert vocabulary_digest() != first
