"""Captions -> LLaVA conversation turns: the opening question, and facet follow-ups for ``--multi-turn``.

A structured report (泥质..., 方解石..., 长石具粘土化, 少见锆石...) answers several questions at once. With
``--multi-turn`` it is split into sentences/clauses, each clause is assigned the facet of the terms it
names (lexicon data), and every facet becomes a follow-up turn after the full description, asked with a
facet-specific question in the caption's language. Questions are drawn from pools kept as data
(``thinchat/domain/questions.yaml``), deterministically per (seed, entry id).
"""

from __future__ import annotations

import random

from thinchat.domain.lexicon import Lexicon, load_lexicon
from thinchat.domain.questions import QuestionPools, load_questions
from thinchat.domain.reports import split_clauses

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
    """Facet -> the clauses of ``caption`` on that facet, joined, in report order of first mention."""
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


def build_exchanges(
    caption: str,
    lang: str,
    rng: random.Random,
    multi_turn: bool = False,
    pools: QuestionPools | None = None,
    lexicon: Lexicon | None = None,
) -> list[tuple[str, str, str]]:
    """``(type, question, answer)`` for one caption: the description, then facet follow-ups if asked."""
    pools = pools or load_questions()
    exchanges = [("describe", rng.choice(pools.describe[lang]), caption)]
    if not multi_turn:
        return exchanges
    answers = facet_answers(caption, lexicon or load_lexicon(), lang)
    if len(answers) < 2:
        return exchanges  # a single-facet caption: a follow-up would repeat the description
    for facet, answer in answers.items():
        questions = pools.facets.get(facet, {}).get(lang)
        if questions:
            exchanges.append(("facet", rng.choice(questions), answer))
    return exchanges


def place_turns(
    exchanges: list[tuple[str, str, str]], n_images: int, rng: random.Random | None = None
) -> tuple[list[dict[str, str]], list[str]]:
    """LLaVA ``conversations`` and the type of each exchange; shuffled when ``rng`` is given.

    The images always go with the first human turn, whichever question comes first, so a grounded
    question is trained both as an opening question and as a follow-up after the description.
    """
    order = list(exchanges)
    if rng is not None:
        rng.shuffle(order)
    turns: list[dict[str, str]] = []
    for k, (_, question, answer) in enumerate(order):
        turns.append({"from": "human", "value": ("<image>\n" * n_images if k == 0 else "") + question})
        turns.append({"from": "gpt", "value": answer})
    return turns, [kind for kind, _, _ in order]


def build_conversation(
    caption: str,
    lang: str,
    n_images: int,
    rng: random.Random,
    multi_turn: bool = False,
    pools: QuestionPools | None = None,
    lexicon: Lexicon | None = None,
) -> list[dict[str, str]]:
    """LLaVA ``conversations`` for one caption: the description turn, then facet follow-ups if asked."""
    return place_turns(build_exchanges(caption, lang, rng, multi_turn, pools, lexicon), n_images)[0]
