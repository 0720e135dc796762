"""Follow-up turns from a report: facet follow-ups, and grounded presence, which-of and attribute questions.

The one generator of every turn after a slide's description (``GroundedQA.items``): ``thinchat data
convert --multi-turn`` asks for the facet follow-ups (``QAOptions.facets``), ``--qa-turns N`` for N
grounded questions, and the question-following evaluation for held-out phrasings of the grounded ones.
Why one: both kinds are a report split into what it says, asked about in the caption's language from the
pools of ``questions.yaml``, drawn from the caller's ``random.Random``; kept apart they drifted (two
readers of a report's clauses, two item shapes, two orders of drawing from the seed).

- facet: the report's clauses grouped by the facet they are about (``reports.facet_answers``: matrix,
  carbonate, accessory minerals, ...), each group the answer to that facet's question; a report on a
  single facet gets none (the follow-up would repeat the description).

Why grounded questions: a model trained only on "describe this slide" learns to replay its caption
whatever it is asked. Questions whose answer depends on the question (and on the slide) make it read
both. Every answer is derived from the report and the lexicon alone:

- presence: "Is calcite present?" -> "Yes. <the report's clause naming calcite>" for a term the report
  names, and as many questions about terms it does *not* name -> "No, ..."; the negatives are drawn from
  terms that occur elsewhere in the same dataset (weighted by how often), so "yes" is no prior. A "no"
  means "not in the report": it is only as good as the reports (a mineral the petrographer did not
  mention counts as absent). Terms a named term implies (plagioclase -> feldspar, lexicon ``broader``)
  are never expected to be absent, nor are the finer terms of a wide one the report names (a report
  saying "feldspar" may mean plagioclase); a wide term is asked about only in datasets that never name
  its finer terms, where it is the reports' own level of detail;
- which-of: two or three candidates of the same kind (two alterations, two carbonates), exactly one of
  them in the report;
- attribute: a stated percentage ("About how much quartz?"), grain size, roundness, sorting, answered
  with the report's own clause.

Questions and answer templates are data (``questions.yaml``, sections ``facets`` and ``grounded``), in the
caption's language; the choice is deterministic in the ``random.Random`` the caller passes.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from thinchat.domain.lexicon import Lexicon
from thinchat.domain.questions import QuestionPools
from thinchat.domain.reports import facet_answers, parse_proportions, split_clauses

#: Lexicon kinds a presence or which-of question may ask about.
ASK_KINDS = frozenset({"mineral", "matrix", "cement", "alteration"})
#: Attribute questions and the lexicon term whose clause answers them.
ATTRIBUTE_TERMS = {"grain_size": ("grain_size",), "roundness": ("rounded", "subrounded", "subangular",
                   "angular"), "sorting": ("sorting",)}  # fmt: skip


@dataclass(frozen=True)
class QAItem:
    """One follow-up exchange. ``expected`` is "yes"/"no" (presence) or the right term id (which-of)."""

    type: str  # facet | presence | which | attribute
    question: str
    answer: str
    term: str | None = None  # the term asked about; for a facet follow-up, the facet
    expected: str | None = None
    options: tuple[str, ...] = ()
    wording: str = ""  # the question template it was phrased with (scores per wording)


@dataclass(frozen=True)
class QAOptions:
    """Which follow-up turns each slide gets: ``thinchat data convert --multi-turn`` (``facets``) and
    ``--qa-turns`` (the grounded counts), and the evaluation's probes."""

    presence: int = 4  # presence questions per slide, half expecting "yes" and half "no"
    which: int = 1
    attribute: int = 1
    negatives: bool = True  # False: presence questions only about terms the report names
    facets: bool = False  # True: a follow-up per report facet, before the grounded questions

    @classmethod
    def from_total(cls, turns: int, negatives: bool = True, facets: bool = False) -> QAOptions:
        """Split ``turns`` QA turns per slide: one which-of and one attribute question, the rest presence."""
        if turns <= 0:
            return cls(0, 0, 0, negatives, facets)
        which = 1 if turns >= 3 else 0
        attribute = 1 if turns >= 4 else 0
        return cls(turns - which - attribute, which, attribute, negatives, facets)

    @property
    def total(self) -> int:
        """Grounded questions per slide (facet follow-ups are as many as the report has facets)."""
        return self.presence + self.which + self.attribute


class TermPool:
    """How many reports of a dataset name each askable term: where negatives and distractors come from."""

    def __init__(self, counts: Counter[str]) -> None:
        self.counts = counts

    @classmethod
    def from_reports(cls, reports: Iterable[str], lexicon: Lexicon) -> TermPool:
        counts: Counter[str] = Counter()
        for report in reports:
            counts.update(lexicon.find(report, kinds=set(ASK_KINDS)))
        return cls(counts)

    def draw(
        self, rng: random.Random, exclude: set[str], k: int, where: Iterable[str] | None = None
    ) -> list[str]:
        """Up to ``k`` distinct terms not in ``exclude``, drawn in proportion to their counts."""
        allowed = set(where) if where is not None else None
        pool = [
            (t, c)
            for t, c in sorted(self.counts.items())
            if t not in exclude and (allowed is None or t in allowed)
        ]
        out: list[str] = []
        while pool and len(out) < k:
            pick = rng.choices(range(len(pool)), weights=[c for _, c in pool])[0]
            out.append(pool.pop(pick)[0])
        return out


def _group(lexicon: Lexicon, term_id: str) -> str:
    """Which-of candidates share a group: their wider term (mica: muscovite, biotite), all alterations
    together, else the report facet."""
    term = lexicon.by_id[term_id]
    if term.broader:
        return term.broader[0]
    return "alteration" if term.kind == "alteration" else term.facet


_SEGMENT = re.compile(r"[，,；;：:]\s*")
_END = "。.！!？?"


def _clause_of(clauses: Sequence[str], term_id: str, lexicon: Lexicon, negated: bool = False) -> str | None:
    """The report's words about ``term_id``: from the comma-separated segment naming it up to the segment
    naming the next askable term ("碎屑成分：石英约占34%，斜长石约占14%" -> "斜长石约占14%"; "方解石约占8%，
    呈连晶状胶结。" stays whole), so an answer quotes the report without its neighbours' facts."""
    for clause in clauses:
        spans = [s for s in lexicon.find_spans(clause) if lexicon.by_id[s.term_id].kind in ASK_KINDS]
        hit = next((s for s in spans if s.term_id == term_id and s.negated == negated), None)
        if hit is None:
            continue
        cuts = list(_SEGMENT.finditer(clause))
        start = max([0] + [m.end() for m in cuts if m.end() <= hit.start])
        following = next((s.start for s in spans if s.start >= hit.end and s.term_id != term_id), None)
        end = len(clause)
        if following is not None:
            end = max((m.start() for m in cuts if hit.end <= m.start() < following), default=len(clause))
        text = clause[start:end].strip()
        return text if text[-1:] in _END else text + ("。" if _is_zh(text) else ".")
    return None


def _is_zh(text: str) -> bool:
    return any("\u3400" <= ch <= "\u9fff" for ch in text)


def _join_options(names: Sequence[str], lang: str) -> str:
    if lang == "zh":
        return "、".join(names[:-1]) + "还是" + names[-1]
    return ", ".join(names[:-1]) + " or " + names[-1]


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def vocabulary_digest() -> str:
    """A hash of the bundled question pools and lexicon: what a converted dataset's turns depend on
    besides the captions, so a recipe re-converts after either file is edited."""
    import hashlib

    from thinchat.domain.lexicon import DEFAULT_LEXICON
    from thinchat.domain.questions import DEFAULT_QUESTIONS

    digest = hashlib.sha256()
    for path in (DEFAULT_QUESTIONS, DEFAULT_LEXICON):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


class GroundedQA:
    """Builds the follow-up items for one report; holds the lexicon, the dataset's term pool and templates.

    The pool only matters for grounded questions (their "no" terms and which-of distractors): facet
    follow-ups alone can take an empty ``TermPool(Counter())``.
    """

    def __init__(
        self, lexicon: Lexicon, pool: TermPool, pools: QuestionPools, held_out_questions: bool = False
    ) -> None:
        """``held_out_questions``: ask with the evaluation-only phrasings (``probe_*`` pools), so a score
        measures answering the question, not recognising a trained template."""
        self.lexicon = lexicon
        self.pool = pool
        # A wide term (feldspar, cement) is asked only where the dataset never names its finer terms: there
        # it is the reports' own level of detail; elsewhere "is there feldspar?" would only echo them.
        narrower = {t.id: lexicon.with_broader({t.id}) - {t.id} for t in lexicon.terms}
        self.unaskable = {
            wide
            for wide in lexicon.umbrella_ids
            if any(wide in narrower[t] for t in pool.counts if t != wide)
        }
        self._narrower_of = {
            wide: {t for t, above in narrower.items() if wide in above} for wide in lexicon.umbrella_ids
        }
        self.facet_questions = pools.facets
        self.templates = dict(pools.grounded)
        if held_out_questions:
            for key in ("presence", "presence_alteration", "which"):
                self.templates[key] = pools.grounded[f"probe_{key}"]

    def _pick(self, rng: random.Random, key: str, lang: str) -> str:
        return rng.choice(self.templates[key][lang])

    def _name(self, term_id: str, lang: str) -> str:
        return self.lexicon.name(term_id, lang)

    def items(self, report: str, lang: str, rng: random.Random, options: QAOptions) -> list[QAItem]:
        """The follow-up items for ``report``: its facet follow-ups (``options.facets``), then its grounded
        questions; drawn from ``rng`` in that order, so a seed gives the same turns whichever options add
        to them."""
        items = self.facet_items(report, lang, rng) if options.facets else []
        if options.total:
            items += self.grounded_items(report, lang, rng, options)
        return items

    def facet_items(self, report: str, lang: str, rng: random.Random) -> list[QAItem]:
        """A follow-up per facet of ``report`` (in report order), answered with its clauses on that facet;
        none for a single-facet report, whose one follow-up would repeat the description."""
        answers = facet_answers(report, self.lexicon, lang)
        if len(answers) < 2:
            return []
        items = []
        for facet, answer in answers.items():
            questions = self.facet_questions.get(facet, {}).get(lang)
            if questions:
                question = rng.choice(questions)
                items.append(QAItem("facet", question, answer, facet, wording=question))
        return items

    def grounded_items(self, report: str, lang: str, rng: random.Random, options: QAOptions) -> list[QAItem]:
        """The grounded items for ``report``; a report naming no askable term gets none."""
        lex = self.lexicon
        spans = lex.find_spans(report)
        named = {s.term_id for s in spans if not s.negated and lex.by_id[s.term_id].kind in ASK_KINDS}
        if not named:
            return []
        present = lex.with_broader(named)
        stated_absent = {s.term_id for s in spans if s.negated} - present
        clauses = split_clauses(report)
        items = self._presence(report, clauses, lang, rng, options, named, present, stated_absent)
        items += self._which(clauses, lang, rng, options.which, named, present)
        items += self._attributes(report, clauses, lang, rng, options.attribute, named)
        return items

    def _presence(self, report, clauses, lang, rng, options, named, present, stated_absent) -> list[QAItem]:
        lex = self.lexicon
        askable = sorted(named - self.unaskable)
        # A report naming only the wide term (feldspar) leaves its finer terms (plagioclase) open: never "no".
        undecided = {t for wide in named for t in self._narrower_of.get(wide, ())}
        n_yes = (options.presence + rng.randrange(2)) // 2 if options.negatives else options.presence
        yes_terms = rng.sample(askable, min(n_yes, len(askable)))
        no_terms: list[str] = []
        if options.negatives:
            # As many "no" as "yes" on every slide, so the answer is never predictable from the count.
            n_no = len(yes_terms)
            no_terms = rng.sample(sorted(stated_absent), min(n_no, len(stated_absent)))
            excluded = present | undecided | set(no_terms) | self.unaskable
            no_terms += self.pool.draw(rng, excluded, n_no - len(no_terms))
            yes_terms = yes_terms[: len(no_terms)]
        items = []
        for term in yes_terms:
            key = "presence_alteration" if lex.by_id[term].kind == "alteration" else "presence"
            clause = _clause_of(clauses, term, lex) or report
            wording = self._pick(rng, key, lang)
            items.append(
                QAItem(
                    "presence",
                    wording.format(term=self._name(term, lang)),
                    self._pick(rng, "answer_yes", lang).format(clause=_cap(clause)),
                    term,
                    "yes",
                    wording=wording,
                )
            )
        for term in no_terms:
            key = "presence_alteration" if lex.by_id[term].kind == "alteration" else "presence"
            clause = _clause_of(clauses, term, lex, negated=True)
            name = self._name(term, lang)
            answer = (
                self._pick(rng, "answer_no_stated", lang).format(clause=_cap(clause))
                if clause
                else self._pick(rng, "answer_no", lang).format(term=name)
            )
            wording = self._pick(rng, key, lang)
            items.append(QAItem("presence", wording.format(term=name), answer, term, "no", wording=wording))
        return items

    def _which(self, clauses, lang, rng, count, named, present) -> list[QAItem]:
        lex = self.lexicon
        items: list[QAItem] = []
        candidates = sorted(named - self.unaskable)
        undecided = {t for wide in named for t in self._narrower_of.get(wide, ())}
        rng.shuffle(candidates)
        for term in candidates:
            if len(items) >= count:
                break
            group = [t for t in self.pool.counts if _group(lex, t) == _group(lex, term)]
            excluded = present | undecided | self.unaskable
            distractors = self.pool.draw(rng, excluded, rng.choice((1, 2)), where=group)
            if not distractors:
                continue
            options = [term, *distractors]
            rng.shuffle(options)
            names = [self._name(t, lang) for t in options]
            clause = _clause_of(clauses, term, lex) or ""
            name = self._name(term, lang)
            if clause.lower().startswith(name.lower()):
                answer = _cap(clause)  # "K-feldspar (about 7%)." already names the answer first
            else:
                answer = self._pick(rng, "answer_which", lang).format(
                    term=name, Term=_cap(name), clause=_cap(clause)
                )
            wording = self._pick(rng, "which", lang)
            question = wording.format(options=_join_options(names, lang))
            items.append(QAItem("which", question, answer.strip(), term, term, tuple(options), wording))
        return items

    def _attributes(self, report, clauses, lang, rng, count, named) -> list[QAItem]:
        lex = self.lexicon
        choices: list[QAItem] = []
        for term, value in sorted(parse_proportions(report, lex).items()):
            if term in named and term not in self.unaskable:
                name = self._name(term, lang)
                choices.append(
                    QAItem(
                        "attribute",
                        self._pick(rng, "percent", lang).format(term=name),
                        self._pick(rng, "answer_percent", lang).format(
                            term=name, Term=_cap(name), value=f"{value:g}"
                        ),
                        term,
                    )
                )
        for attribute, terms in ATTRIBUTE_TERMS.items():
            clause = next((c for t in terms if (c := _clause_of(clauses, t, lex))), None)
            if clause:
                choices.append(QAItem("attribute", self._pick(rng, attribute, lang), clause, attribute))
        return rng.sample(choices, min(count, len(choices)))
