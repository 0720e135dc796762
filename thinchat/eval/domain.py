"""Domain score: did the answer name the right minerals and alterations, and state the right proportions?

A geologist reads a thin-section description for its minerals (quartz, sericite, ...) and alterations
(sericitization, argillization, ...) more than for its n-grams. Terms are found through the bilingual
lexicon (``thinchat.domain.lexicon``), so 石英 and "quartz" are the same canonical id and a Chinese answer can
be scored against an English reference. Scores are precision/recall/F1 of the term sets (0-100), micro-
and macro-averaged; where references state proportions (石英约占45% / quartz about 45%), the mean absolute
error in percentage points of the answer's stated proportions per mineral, with missing mentions counted
separately rather than silently dropped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

#: Lexicon kinds scored: minerals, matrix and cement components (also minerals), and alterations.
DOMAIN_KINDS = frozenset({"mineral", "matrix", "cement", "alteration"})

_CLAUSE_SPLIT = re.compile(r"[，。；;！？!?\n]|,\s|\.(?:\s|$)")
_PERCENT = re.compile(r"(\d+(?:\.\d+)?)\s*(?:[-~～–—至到]\s*(\d+(?:\.\d+)?)\s*)?[%％]")


class LexiconLike(Protocol):
    """What the domain score needs from ``thinchat.domain.lexicon.Lexicon``."""

    def find(self, text: str, kinds: set[str] | None = None) -> set[str]: ...

    def find_spans(self, text: str) -> list[Any]: ...

    by_id: Mapping[str, Any]


def _prf(tp: int, n_pred: int, n_ref: int) -> tuple[float, float, float]:
    p = tp / n_pred if n_pred else 0.0
    r = tp / n_ref if n_ref else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return 100.0 * p, 100.0 * r, 100.0 * f


def stated_proportions(
    text: str, lexicon: LexiconLike, kinds: frozenset[str] = DOMAIN_KINDS
) -> dict[str, float]:
    """Percentages stated per term id, e.g. ``{"quartz": 45.0}`` for "石英约占45%" or "quartz about 45%".

    Within a clause, each percentage goes to the nearest preceding term that has none yet, else to the
    nearest following one ("5% calcite"); a range "20-25%" counts as its midpoint. A term stated twice
    keeps its first value.
    """
    found: dict[str, float] = {}
    for clause in _CLAUSE_SPLIT.split(text):
        spans = [s for s in lexicon.find_spans(clause) if lexicon.by_id[s.term_id].kind in kinds]
        taken: set[int] = set()
        for m in _PERCENT.finditer(clause):
            value = float(m.group(1)) if m.group(2) is None else (float(m.group(1)) + float(m.group(2))) / 2
            before = [k for k, s in enumerate(spans) if s.end <= m.start() and k not in taken]
            after = [k for k, s in enumerate(spans) if s.start >= m.end() and k not in taken]
            pick = before[-1] if before else (after[0] if after else None)
            if pick is None:
                continue
            taken.add(pick)
            found.setdefault(spans[pick].term_id, value)
    return found


def _sample_terms(
    hyp: str, sample_refs: Sequence[str], lexicon: LexiconLike, kind_set: set[str]
) -> tuple[set[str], set[str]]:
    """``(answer terms, reference terms)``: the reference terms are the union over the sample's references,
    since they all describe the same slide."""
    gold: set[str] = set()
    for r in sample_refs:
        gold |= lexicon.find(r, kinds=kind_set)
    return lexicon.find(hyp, kinds=kind_set), gold


def _sample_proportions(
    hyp: str, sample_refs: Sequence[str], lexicon: LexiconLike, kinds: frozenset[str]
) -> dict[str, Any] | None:
    """The proportions the answer states against the references' (per term, the mean of the values the
    references that state one give), or None when no reference states a proportion."""
    stated: dict[str, list[float]] = {}
    for ref_text in sample_refs:
        for tid, v in stated_proportions(ref_text, lexicon, kinds).items():
            stated.setdefault(tid, []).append(v)
    if not stated:
        return None
    ref_props = {t: sum(v) / len(v) for t, v in stated.items()}
    ans_props = stated_proportions(hyp, lexicon, kinds)
    return {
        "reference": dict(sorted(ref_props.items())),
        "answer": dict(sorted(ans_props.items())),
        "abs_error": {t: abs(ans_props[t] - ref_props[t]) for t in sorted(ref_props) if t in ans_props},
        "missing": sorted(t for t in ref_props if t not in ans_props),
        "extra": sorted(t for t in ans_props if t not in ref_props),
    }


def _proportion_totals(per_sample: Mapping[str, dict]) -> dict[str, Any]:
    """The proportion section over every sample with stated reference proportions: mean absolute error
    of the matched terms, and how many terms the answers left out or added."""
    sections = [e["proportions"] for e in per_sample.values() if "proportions" in e]
    errors = [v for s in sections for v in s["abs_error"].values()]
    return {
        "n_samples": len(sections),
        "mae": sum(errors) / len(errors) if errors else None,
        "n_matched": len(errors),
        "n_missing": sum(len(s["missing"]) for s in sections),
        "n_extra": sum(len(s["extra"]) for s in sections),
    }


def domain_scores(
    hyps: Mapping[str, str],
    refs: Mapping[str, Sequence[str]],
    lexicon: LexiconLike | None = None,
    kinds: frozenset[str] = DOMAIN_KINDS,
) -> dict:
    """Term precision/recall/F1 (micro and macro) and proportion error of ``hyps`` against ``refs``.

    Reference terms are the union over an id's references (they describe the same slide). Macro averages
    run over samples whose references name at least one term (the others are counted in
    ``n_no_reference_terms``); a sample whose answer names nothing has precision 0 there.
    """
    if lexicon is None:
        from thinchat.domain.lexicon import load_lexicon

        lexicon = load_lexicon()
    kind_set = set(kinds)
    per_sample: dict[str, dict] = {}
    tp_sum = pred_sum = ref_sum = 0
    macro: list[tuple[float, float, float]] = []
    for sid in sorted(hyps):
        pred, gold = _sample_terms(hyps[sid], refs[sid], lexicon, kind_set)
        tp = len(pred & gold)
        tp_sum, pred_sum, ref_sum = tp_sum + tp, pred_sum + len(pred), ref_sum + len(gold)
        p, r, f = _prf(tp, len(pred), len(gold))
        entry: dict[str, Any] = {
            "answer_terms": sorted(pred),
            "reference_terms": sorted(gold),
            "precision": p,
            "recall": r,
            "f1": f,
        }
        if gold:
            macro.append((p, r, f))
        proportions = _sample_proportions(hyps[sid], refs[sid], lexicon, kinds)
        if proportions is not None:
            entry["proportions"] = proportions
        per_sample[sid] = entry
    micro_p, micro_r, micro_f = _prf(tp_sum, pred_sum, ref_sum)
    n_macro = len(macro)
    return {
        "kinds": sorted(kinds),
        "micro": {"precision": micro_p, "recall": micro_r, "f1": micro_f},
        "macro": {
            "precision": sum(m[0] for m in macro) / n_macro if n_macro else 0.0,
            "recall": sum(m[1] for m in macro) / n_macro if n_macro else 0.0,
            "f1": sum(m[2] for m in macro) / n_macro if n_macro else 0.0,
            "n_samples": n_macro,
        },
        "n_no_reference_terms": len(hyps) - n_macro,
        "proportions": _proportion_totals(per_sample),
        "per_sample": per_sample,
    }
