"""Reading a petrographic report: its clauses, the facet each is about, and the proportions it states.

Why here: the follow-up turns (``grounded_qa.py``: facet follow-ups and grounded questions) and the
synthetic-data checks read reports the same way, whoever wrote them (a petrographer,
``data_tools/report.py``, a model).
"""

from __future__ import annotations

import re

from thinchat.domain.lexicon import Lexicon, load_lexicon

_SPLIT = re.compile(r"(?<=[。！？；;!?])|(?<=\.)(?=\s)")
_NUMBER = re.compile(
    r"\s*(?:约占|含量约|占|约|:|：)?\s*[(（]?\s*(?:about|approx\.|approximately|~|约|makes? up about|makes? up)?\s*"
    r"(\d+(?:\.\d+)?)\s*%"
)


def split_clauses(text: str) -> list[str]:
    """Sentences/clauses of a report: split after 。！？；; and after '.' followed by a space (not 0.25)."""
    return [part.strip() for part in _SPLIT.split(text) if part.strip()]


def parse_proportions(text: str, lexicon: Lexicon | None = None) -> dict[str, float]:
    """Percentages stated right after a term (``石英约占45%``, ``quartz (about 45%)``), keyed by lexicon id."""
    lex = lexicon or load_lexicon()
    found: dict[str, float] = {}
    for span in lex.find_spans(text):
        m = _NUMBER.match(text, span.end)
        if m and span.term_id not in found:
            found[span.term_id] = float(m.group(1))
    return found


#: Facets in report order; terms of facet "view" (PPL/XPL) do not decide a clause's facet.
FACETS = (
    "composition",
    "matrix",
    "carbonate",
    "silica",
    "feldspar_alteration",
    "accessory",
    "grain_size",
    "fabric",
    "pores",
)


def classify(clause: str, lexicon: Lexicon) -> str | None:
    """The facet of one clause: that of its first term, refined when the subject is a framework mineral.

    "长石具粘土化" starts with a framework mineral but is about alteration; "石英具波状消光" is about the
    fabric. Clauses naming no term get ``None`` (the caller attaches them to the previous clause).
    """
    spans = [s for s in lexicon.find_spans(clause) if lexicon.facet(s.term_id) != "view"]
    if not spans:
        return None
    first = lexicon.facet(spans[0].term_id)
    if first != "composition":
        return first
    terms = [lexicon.by_id[s.term_id] for s in spans]
    for term in terms:
        if term.kind == "alteration":
            return term.facet
    for facet in ("fabric", "grain_size"):
        if any(t.facet == facet for t in terms):
            return facet
    return first


def facet_answers(caption: str, lexicon: Lexicon, lang: str) -> dict[str, str]:
    """Facet -> the clauses of ``caption`` on that facet, joined, in report order of first mention.

    Why grouped, not one clause a facet: a report often spreads one facet over several sentences (a
    cement's amount, then its texture), and a follow-up answer should hold all the report says on it.
    """
    grouped: dict[str, list[str]] = {}
    current: str | None = None
    for clause in split_clauses(caption):
        facet = classify(clause, lexicon) or current
        if facet is None:
            continue
        grouped.setdefault(facet, []).append(clause)
        current = facet
    sep = "" if lang == "zh" else " "
    return {facet: sep.join(clauses) for facet, clauses in grouped.items()}
