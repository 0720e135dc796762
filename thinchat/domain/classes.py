"""Class labels as lexicon terms: what a labelled set's classes are called, asked about and read back.

Why one place: the converter writes a labelled image's description and grounded questions from its
classes, and the evaluation reads the class back out of the model's answer; both must agree on which
words name which class. A class whose name is a lexicon term (``quartz``, ``K-feldspar``, ``lithic`` ->
``rock_fragment``) is that term: its names in both languages, and what it implies (``broader``). A class
the lexicon does not know (``granite_A``) is used as it is, a term of its own named as given. An umbrella
term (``feldspar``) is a class like any other: the grounded questions draw their "no" terms from the
label set only, so a grain labelled ``feldspar`` is never asked about plagioclase.
"""

from __future__ import annotations

import dataclasses
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from thinchat.domain.grounded_qa import ASK_KINDS
from thinchat.domain.language import is_chinese
from thinchat.domain.lexicon import Lexicon, Term, load_lexicon
from thinchat.errors import DataFormatError

#: The report facet every class term gets: which-of questions draw their options from one facet, and a
#: label set's options are its classes whatever their lexicon facet (quartz, calcite).
LABEL_FACET = "labels"


def display_name(name: str) -> str:
    """A class name as words: ``k_feldspar`` -> ``k feldspar``, extra spaces collapsed."""
    return " ".join(name.replace("_", " ").split())


def match_class(name: str, lexicon: Lexicon) -> str | None:
    """The lexicon term a class name is, when the whole name is one term's name (any language); else None."""
    text = display_name(name)
    spans = lexicon.find_spans(text)
    if len(spans) == 1 and (spans[0].start, spans[0].end) == (0, len(text)) and not spans[0].negated:
        return spans[0].term_id
    return None


@dataclass(frozen=True)
class ClassSet:
    """A label set: each class's lexicon term, and the lexicon in which every class is an askable term."""

    classes: tuple[str, ...]  # as given, sorted
    term_of: dict[str, str]  # class -> term id
    lexicon: Lexicon
    unmatched: frozenset[str] = frozenset()  # classes the lexicon does not know, used as given

    def name(self, cls: str, lang: str) -> str:
        """What the class is called in ``lang`` (the lexicon's preferred name, or the name as given)."""
        return self.lexicon.name(self.term_of[cls], lang)

    def read(self, text: str) -> list[str]:
        """The classes ``text`` names (not negated), in the order it names them; a finer term counts for
        the class it implies (plagioclase for a ``feldspar`` class that has no plagioclase class)."""
        class_of = {t: c for c, t in self.term_of.items()}
        out: list[str] = []
        for span in self.lexicon.find_spans(text):
            if span.negated:
                continue
            hits = [span.term_id] if span.term_id in class_of else sorted(
                t for t in self.lexicon.with_broader({span.term_id}) if t in class_of
            )  # fmt: skip
            for term in hits[:1]:
                if class_of[term] not in out:
                    out.append(class_of[term])
        return out

    def describe(
        self, classes: Sequence[str], lang: str, templates: Sequence[str], rng: random.Random
    ) -> str:
        """A short description naming ``classes`` from one of ``templates`` (``{classes}`` is filled in)."""
        names = [self.name(c, lang) for c in classes]
        if len(names) == 1:
            joined = names[0]
        elif lang == "zh":
            joined = "、".join(names[:-1]) + "和" + names[-1]
        else:
            joined = ", ".join(names[:-1]) + " and " + names[-1]
        return rng.choice(list(templates)).format(classes=joined)


#: Id prefix of a class the lexicon does not know (only where its own name would clash with a term id).
_OWN_PREFIX = "class:"


def _own_term(cls: str, taken: set[str]) -> Term:
    """A term for a class the lexicon does not know: named as given, in the language it is written in."""
    shown = display_name(cls)
    slug = re.sub(r"\s+", "_", shown.lower())
    term_id = slug if slug not in taken else f"{_OWN_PREFIX}{slug}"
    zh, en = ([shown], []) if is_chinese(shown) else ([], [shown])
    return Term(term_id, zh, en, "mineral", LABEL_FACET)


def class_set(classes: Iterable[str], lexicon: Lexicon | None = None) -> ClassSet:
    """The class set of ``classes`` over ``lexicon`` (default: the bundled one).

    Raises ``DataFormatError`` when two classes are the same term (``lithic`` and ``rock fragment``):
    the model could not tell them apart, nor could the report.
    """
    base = lexicon or load_lexicon()
    names = sorted({c for c in classes if c})
    term_of: dict[str, str] = {}
    own: list[Term] = []
    for cls in names:
        term = match_class(cls, base)
        if term is None:
            own.append(_own_term(cls, set(base.by_id) | {t.id for t in own}))
            term = own[-1].id
        same = [c for c, t in term_of.items() if t == term]
        if same:
            raise DataFormatError(
                f"classes {same[0]!r} and {cls!r} both name the lexicon term {term!r}; merge them into one class"
            )
        term_of[cls] = term
    chosen = set(term_of.values())
    terms = []
    for term in base.terms:
        if term.id in chosen:
            wider = tuple(sorted((base.with_broader({term.id}) - {term.id}) & chosen))
            kind = term.kind if term.kind in ASK_KINDS else "mineral"  # a rock class is asked about too
            term = dataclasses.replace(term, kind=kind, facet=LABEL_FACET, broader=wider)
        terms.append(term)
    unmatched = frozenset(c for c, t in term_of.items() if t in {o.id for o in own})
    return ClassSet(tuple(names), term_of, Lexicon(terms + own), unmatched)
