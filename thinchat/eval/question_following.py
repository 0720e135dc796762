"""Question following: does the model answer the question asked, and answer it right?

A captioner replays its training report whatever it is asked; an assistant answers "Is calcite present?"
with yes or no, and with the right one. For every held-out slide this module asks grounded questions
derived from the slide's reference report (``thinchat.domain.grounded_qa``, the same generator that makes the
training turns, with its own seed, phrased with evaluation-only question pools that training never
sees): presence questions, balanced between terms the report names ("yes")
and terms named elsewhere in the test set but not in this report ("no"), and which-of questions with
exactly one right option. Scores, per language and overall:

- ``yes_no_accuracy``: balanced accuracy (mean of the accuracy on "yes" and on "no" questions), so a
  model that always says "yes" scores 0.5, not the share of "yes" questions;
- ``answer_form``: share of yes/no questions answered with a yes or a no first (yes/no, 是/否/有/没有);
- ``which_accuracy``: share of which-of questions whose first named option is the right one;
- ``yes_by_share`` and ``presence_by_term``: where the yes/no answers go wrong. A model that reads only
  the large phases off the image says "no" to the minor ones its report names; the share of the slide
  the reference gives a term (``quartz (about 31%)``) sorts its "yes" questions into bins, and every
  term gets its right answers on "yes" and on "no" questions.

- ``by_wording``: per question template, the balanced accuracy and the share of answers that are "yes",
  so a wording the model answers the same way whatever the slide shows.

The same questions are also asked the way every interface answers them by default, after the model's
own description of the slide (looking first, :mod:`thinchat.chat.look`): ``followup_*`` holds those
scores. With the descriptions, the answers are also held against the model's own reading of the slide:
``alone_consistency`` (questions asked directly) and ``followup_consistency`` (after looking) are the
shares of yes/no answers that agree with what its description names, ``*_which_consistency`` the shares
that agree with its answer to the slide's which-of question where that question offered the term.

Ground truth is the reference report: "no" means "not in the report".
"""

from __future__ import annotations

import dataclasses
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from thinchat.config import field
from thinchat.evalsample import EvalSample

#: Presence and which-of questions per held-out slide. Three which-of questions (where the report has
#: that many askable terms) make 40 slides ~100 questions, not 36: the standard error of an accuracy
#: near 0.65 falls from 0.08 to 0.05, so a ``--check`` floor can sit under it without flaking.
DEFAULT_PRESENCE = 4
DEFAULT_WHICH = 3


def question_probes_field() -> Any:
    """The ``question_probes`` setting, declared once for ``thinchat eval --question-probes`` and the
    recipes' configs (finetune, quickstart), which pass it to ``evaluate``: same default, same help."""
    return field(
        DEFAULT_PRESENCE,
        help="grounded yes/no questions per held-out slide (half 'yes', half 'no') plus up to three "
        "which-of questions, scored in the report's question-following section (0: off)",
    )


#: Answers are judged on their first words; the rest of a longer answer need not be generated.
DEFAULT_MAX_NEW_TOKENS = 24

_YES = re.compile(r"^\W*(?:yes|yeah|yep|correct|present|是的|是|有|对|存在|含有|见到|可见)", re.IGNORECASE)
_NO = re.compile(
    r"^\W*(?:no\b|not\b|none\b|absent|没有|没|否|无|不|未见|未)",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Probe:
    """One grounded question about one held-out slide, with what a right answer contains."""

    sample: EvalSample
    index: int
    type: str  # presence | which
    question: str
    expected: str  # "yes" / "no" (presence) or the right term id (which)
    options: tuple[str, ...] = ()
    term: str | None = None  # the term asked about (lexicon id)
    wording: str = ""  # the question template (scores per wording)

    @property
    def id(self) -> str:
        return f"{self.sample.id}#q{self.index}"

    def as_sample(self) -> EvalSample:
        """The probe as an evaluation sample of the same kind as the slide's (image files, or stored
        ClipCap embeddings), with the slide's ``<image>`` placeholders first, then the question."""
        placeholders = "<image>\n" * self.sample.question.count("<image>")
        return dataclasses.replace(
            self.sample,
            id=self.id,
            question=placeholders + self.question,
            references=[self.expected],
            entry_ids=[],
        )


def parse_yes_no(answer: str) -> str | None:
    """ "yes", "no" or None (not a yes/no answer) from the first words of ``answer`` (zh or en).

    "no"/"没有"/"不" are tested first: 没有 starts like 有 would not, but "not present" must not read as yes.
    """
    if _NO.match(answer):
        return "no"
    if _YES.match(answer):
        return "yes"
    return None


def first_option(answer: str, options: Sequence[str], lexicon: Any) -> str | None:
    """The option (term id) the answer names first, or None when it names none of them."""
    for span in lexicon.find_spans(answer):
        if span.term_id in options and not span.negated:
            return span.term_id
    return None


def build_probes(
    samples: Sequence[EvalSample],
    lexicon: Any = None,
    seed: int = 0,
    presence: int = DEFAULT_PRESENCE,
    which: int = DEFAULT_WHICH,
    held_out_questions: bool = True,
) -> list[Probe]:
    """Grounded questions for each sample, from its first reference; deterministic in ``seed``.

    ``held_out_questions`` (default) phrases them with the evaluation-only pools (``probe_*`` in
    ``questions.yaml``), never seen in training, so the score is not template recognition."""
    from thinchat.domain.grounded_qa import GroundedQA, QAOptions, TermPool
    from thinchat.domain.lexicon import load_lexicon
    from thinchat.domain.questions import load_questions

    lexicon = lexicon or load_lexicon()
    pool = TermPool.from_reports((s.references[0] for s in samples), lexicon)
    grounded = GroundedQA(lexicon, pool, load_questions(), held_out_questions=held_out_questions)
    options = QAOptions(presence=presence, which=which, attribute=0, negatives=True)
    probes: list[Probe] = []
    for sample in samples:
        rng = random.Random(f"probe\0{seed}\0{sample.id}")
        for k, item in enumerate(grounded.items(sample.references[0], sample.lang, rng, options)):
            probes.append(
                Probe(
                    sample,
                    k,
                    item.type,
                    item.question,
                    str(item.expected),
                    item.options,
                    item.term,
                    item.wording,
                )
            )
    return probes


def _share(hits: int, total: int) -> float | None:
    return hits / total if total else None


def _balanced(
    yes: Sequence[Probe], no: Sequence[Probe], said: Mapping[str, str | None]
) -> tuple[float | None, float | None, float | None]:
    """(balanced, "yes", "no") accuracy of the answers ``said`` per probe id; None where none was asked."""
    acc_yes = _share(sum(said[p.id] == "yes" for p in yes), len(yes))
    acc_no = _share(sum(said[p.id] == "no" for p in no), len(no))
    balanced = (acc_yes + acc_no) / 2 if acc_yes is not None and acc_no is not None else None
    return balanced, acc_yes, acc_no


def _default_lexicon(lexicon: Any) -> Any:
    if lexicon is None:
        from thinchat.domain.lexicon import load_lexicon

        lexicon = load_lexicon()
    return lexicon


#: Bins of the share of the slide a reference report gives a term: (lowest percent, label), largest first.
SHARE_BINS = ((10.0, ">=10%"), (3.0, "3-10%"), (0.0, "<3%"))
#: The bin of terms the report names without a percentage ("zircon (trace)", "K-feldspar shows argillization").
NO_SHARE = "no % stated"


def share_bin(share: float | None) -> str:
    """The ``SHARE_BINS`` label of a stated percentage, or ``NO_SHARE``."""
    if share is None:
        return NO_SHARE
    return next((label for floor, label in SHARE_BINS if share >= floor), SHARE_BINS[-1][1])


def _yes_by_share(yes: Sequence[Probe], said: Mapping[str, str | None], lexicon: Any) -> dict[str, Any]:
    """Accuracy on "yes" questions per bin of the term's stated share, with the number asked per bin."""
    from thinchat.domain.reports import parse_proportions

    tally: dict[str, list[int]] = {}
    shares: dict[str, dict[str, float]] = {}  # per slide: its reference parsed once for all its questions
    for p in yes:
        if p.sample.id not in shares:
            shares[p.sample.id] = parse_proportions(p.sample.references[0], lexicon)
        share = shares[p.sample.id].get(p.term) if p.term else None
        counts = tally.setdefault(share_bin(share), [0, 0])
        counts[0] += said[p.id] == "yes"
        counts[1] += 1
    order = [label for _, label in SHARE_BINS] + [NO_SHARE]
    return {b: {"accuracy": tally[b][0] / tally[b][1], "n": tally[b][1]} for b in order if b in tally}


def _by_term(presence: Sequence[Probe], said: Mapping[str, str | None]) -> dict[str, dict[str, list[int]]]:
    """Per term: [right, asked] on its "yes" questions and on its "no" questions."""
    out: dict[str, dict[str, list[int]]] = {}
    for p in presence:
        counts = out.setdefault(p.term or "?", {"yes": [0, 0], "no": [0, 0]})[p.expected]
        counts[0] += said[p.id] == p.expected
        counts[1] += 1
    return dict(sorted(out.items()))


def _scores(probes: Sequence[Probe], answers: Mapping[str, str], lexicon: Any) -> dict[str, Any]:
    yes = [p for p in probes if p.type == "presence" and p.expected == "yes"]
    no = [p for p in probes if p.type == "presence" and p.expected == "no"]
    which = [p for p in probes if p.type == "which"]
    said = {p.id: parse_yes_no(answers[p.id]) for p in yes + no}
    balanced, acc_yes, acc_no = _balanced(yes, no, said)
    return {
        "yes_no_accuracy": balanced,
        "yes_accuracy": acc_yes,
        "no_accuracy": acc_no,
        "answer_form": _share(sum(v is not None for v in said.values()), len(said)),
        "which_accuracy": _share(
            sum(first_option(answers[p.id], p.options, lexicon) == p.expected for p in which), len(which)
        ),
        "n_yes": len(yes),
        "n_no": len(no),
        "n_which": len(which),
        "yes_by_share": _yes_by_share(yes, said, lexicon),
        "presence_by_term": _by_term(yes + no, said),
        "by_wording": _by_wording(yes, no, said),
    }


#: A wording answered the same way for at least this share of its questions ignores the slide.
SAME_ANSWER_SHARE = 0.9


def _by_wording(
    yes: Sequence[Probe], no: Sequence[Probe], said: Mapping[str, str | None]
) -> dict[str, dict[str, Any]]:
    """Per question template: balanced accuracy, the share of its answers that are "yes" and that are
    "no", and ``same_answer`` when one of them reaches ``SAME_ANSWER_SHARE``."""
    out: dict[str, dict[str, Any]] = {}
    for wording in sorted({p.wording for p in [*yes, *no]}):
        w_yes = [p for p in yes if p.wording == wording]
        w_no = [p for p in no if p.wording == wording]
        answers = [said[p.id] for p in [*w_yes, *w_no]]
        share_yes, share_no = answers.count("yes") / len(answers), answers.count("no") / len(answers)
        out[wording] = {
            "yes_no_accuracy": _balanced(w_yes, w_no, said)[0],
            "said_yes": share_yes,
            "said_no": share_no,
            "n": len(answers),
            "same_answer": max(share_yes, share_no) >= SAME_ANSWER_SHARE,
        }
    return out


#: Scores repeated for the follow-up questions (``add_followup_scores``).
FOLLOWUP_KEYS = (
    "yes_no_accuracy",
    "yes_accuracy",
    "no_accuracy",
    "answer_form",
    "which_accuracy",
    "yes_by_share",
    "presence_by_term",
    "by_wording",
)


def add_followup_scores(
    scores: dict[str, Any],
    probes: Sequence[Probe],
    answers: Mapping[str, str],
    lexicon: Any = None,
    descriptions: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """``scores`` (from ``score_probes``) with ``followup_<key>`` per language for ``answers`` to the
    same probes asked after the model's description, and each record's ``followup_answer``.

    With ``descriptions`` (slide id -> the model's description the follow-ups came after), also per
    language: ``description_yes_no_accuracy``, the balanced yes/no accuracy of reading each answer off
    the description (yes when it names the term), ``followup_consistency`` and ``alone_consistency``,
    the shares of yes/no answers after looking and asked directly that agree with it, and
    ``followup_which_consistency`` / ``alone_which_consistency``, the same against the model's which-of
    answer for the slide. Why: an answer can only be as right as the model's reading of the slide, and
    an assistant that contradicts its own reading is worse than either number shows.
    """
    lexicon = _default_lexicon(lexicon)
    followup = score_probes(probes, answers, lexicon)
    for lang, values in followup.items():
        if lang != "records":
            scores[lang].update({f"followup_{key}": values[key] for key in FOLLOWUP_KEYS})
    for record, again in zip(scores["records"], followup["records"], strict=True):
        record["followup_answer"] = again["answer"]
        record["followup_parsed"] = again["parsed"]
    if descriptions is not None:
        presence = [p for p in probes if p.type == "presence"]
        said = {p.id: description_says(descriptions[p.sample.id], p.term, lexicon) for p in presence}
        alone = {r["id"]: r["parsed"] for r in scores["records"]}
        parsed = {r["id"]: r["parsed"] for r in followup["records"]}
        which_alone = which_reading(probes, {r["id"]: r["answer"] for r in scores["records"]}, lexicon)
        which_after = which_reading(probes, answers, lexicon)
        for lang in [k for k in scores if k != "records"]:
            chosen = [p for p in presence if lang == "all" or p.sample.lang == lang]
            scores[lang].update(_description_scores(chosen, said, parsed))
            scores[lang]["alone_consistency"] = agreement(chosen, alone, said)
            scores[lang]["alone_which_consistency"] = agreement(chosen, alone, which_alone)
            scores[lang]["followup_which_consistency"] = agreement(chosen, parsed, which_after)
    return scores


def agreement(
    presence: Sequence[Probe], parsed: Mapping[str, str | None], reading: Mapping[str, str]
) -> float | None:
    """The share of yes/no answers (``parsed``) that agree with the model's own ``reading`` of the
    slide, over the questions that have both an answer and a reading; None when there are none."""
    both = [p for p in presence if parsed.get(p.id) is not None and p.id in reading]
    return _share(sum(parsed[p.id] == reading[p.id] for p in both), len(both))


def which_reading(probes: Sequence[Probe], answers: Mapping[str, str], lexicon: Any) -> dict[str, str]:
    """Per presence probe whose term one of the same slide's which-of questions offered (the first that
    did): "yes" when the model's answer to it picked that term, "no" when it picked another (no reading
    when it named none)."""
    lexicon = _default_lexicon(lexicon)
    which: dict[str, list[Probe]] = {}
    for p in probes:
        if p.type == "which":
            which.setdefault(p.sample.id, []).append(p)
    out: dict[str, str] = {}
    for p in probes:
        offered = [w for w in which.get(p.sample.id, []) if p.term in w.options]
        if p.type != "presence" or not offered:
            continue
        w = offered[0]
        picked = first_option(answers[w.id], w.options, lexicon)
        if picked is not None:
            out[p.id] = "yes" if picked == p.term else "no"
    return out


def description_says(description: str, term: str | None, lexicon: Any) -> str:
    """ "yes" when ``description`` names ``term`` (or a finer term of it, plagioclase for feldspar)."""
    return "yes" if term in lexicon.with_broader(lexicon.find(description)) else "no"


def _description_scores(
    presence: Sequence[Probe], said: Mapping[str, str], parsed: Mapping[str, str | None]
) -> dict[str, float | None]:
    """Presence answers read off the description (``said``) against the reference, and the share of
    the follow-up answers (``parsed``) that agree with them."""
    yes = [p for p in presence if p.expected == "yes"]
    no = [p for p in presence if p.expected == "no"]
    return {
        "description_yes_no_accuracy": _balanced(yes, no, said)[0],
        "followup_consistency": agreement(presence, parsed, said),
    }


def score_probes(probes: Sequence[Probe], answers: Mapping[str, str], lexicon: Any = None) -> dict[str, Any]:
    """Scores overall (``"all"``) and per language, plus per-probe records for the report."""
    lexicon = _default_lexicon(lexicon)
    langs = sorted({p.sample.lang for p in probes})
    out: dict[str, Any] = {"all": _scores(probes, answers, lexicon)}
    for lang in langs:
        out[lang] = _scores([p for p in probes if p.sample.lang == lang], answers, lexicon)
    out["records"] = [
        {
            "id": p.id,
            "lang": p.sample.lang,
            "type": p.type,
            "term": p.term,
            "wording": p.wording,
            "question": p.question,
            "expected": p.expected,
            "options": list(p.options),
            "answer": answers[p.id],
            "parsed": parse_yes_no(answers[p.id])
            if p.type == "presence"
            else first_option(answers[p.id], p.options, lexicon),
        }
        for p in probes
    ]
    return out
