"""Reading a petrographic report: its clauses and the proportions it states.

Why here: the facet splitter (``data_tools/turns.py``), the grounded questions and the synthetic-data
checks read reports the same way, whoever wrote them (a petrographer, ``data_tools/report.py``, a model).
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
