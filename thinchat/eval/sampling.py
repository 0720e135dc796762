"""Which held-out slides a report scores, how they were drawn, and what could be asked about them.

Why not the first N: test sets are often sorted (exported class folders, ids by class or by well), and
the first 40 of a class-sorted set are one class; the report then shows a perfect term F1 and no
question-following section at all, since one class gives no "no" question and no which-of. So a limited
report scores a seeded sample spread over the strata: the slides' classes (labelled data), else the first
askable term each reference names. Each stratum gets at least one slide where the limit allows, the rest
in proportion to its size; the report states the draw.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

#: The stratum of a slide whose reference names no askable term.
NO_TERM = "(no term)"
#: Strata listed by name in the report up to this many; more are counted.
LISTED_STRATA = 12


def stratum(sample: Any, lexicon: Any) -> str:
    """A slide's stratum: its classes (``a/b`` for several), else the first askable term its reference
    names, else ``NO_TERM``."""
    if getattr(sample, "labels", ()):
        return "/".join(sorted(sample.labels))
    from thinchat.domain.grounded_qa import ASK_KINDS

    for span in lexicon.find_spans(sample.references[0] if sample.references else ""):
        if not span.negated and lexicon.by_id[span.term_id].kind in ASK_KINDS:
            return span.term_id
    return NO_TERM


def allocate(sizes: dict[str, int], limit: int) -> dict[str, int]:
    """Slides per stratum: one each (where ``limit`` allows), the rest by largest shortfall against each
    stratum's proportional share, never more than a stratum holds."""
    total = sum(sizes.values())
    quota = {k: (1 if limit >= len(sizes) else 0) for k in sizes}
    ideal = {k: n * limit / total for k, n in sizes.items()}
    for _ in range(limit - sum(quota.values())):
        open_ = [k for k in sizes if quota[k] < sizes[k]]
        if not open_:
            break
        pick = max(open_, key=lambda k: (ideal[k] - quota[k], sizes[k], k))
        quota[pick] += 1
    return quota


def draw_sample(
    samples: Sequence[Any], limit: int | None, seed: int = 0, lexicon: Any = None
) -> tuple[list, dict]:
    """``(chosen samples in their file order, how they were drawn)``; all of them when ``limit`` is None
    or covers them. With more strata than ``limit``, one slide from each of the ``limit`` largest strata
    (ties drawn by the seed)."""
    total = len(samples)
    if limit is None or limit >= total:
        return list(samples), {"scored": total, "held_out": total, "drawn": "all"}
    if lexicon is None:
        from thinchat.domain.lexicon import load_lexicon

        lexicon = load_lexicon()
    groups: dict[str, list[int]] = {}
    for i, sample in enumerate(samples):
        groups.setdefault(stratum(sample, lexicon), []).append(i)
    rng = random.Random(f"sample\0{seed}")
    names = sorted(groups)
    if len(names) > limit:  # the largest strata, ties drawn; slides naming no term last (nothing to ask)
        order = {k: rng.random() for k in names}
        names = sorted(sorted(names, key=lambda k: (k == NO_TERM, -len(groups[k]), order[k]))[:limit])
        quota = dict.fromkeys(names, 1)
    else:
        quota = allocate({k: len(groups[k]) for k in names}, limit)
    chosen = sorted(i for k in names for i in rng.sample(groups[k], quota[k]))
    by = "class" if any(getattr(s, "labels", ()) for s in samples) else "the first term each reference names"
    drawn = {
        "scored": len(chosen),
        "held_out": total,
        "drawn": "stratified",
        "seed": seed,
        "stratified_by": by,
        "strata": {k: [quota.get(k, 0), len(groups[k])] for k in sorted(groups)},
    }
    return [samples[i] for i in chosen], drawn


def sample_lines(drawn: dict | None) -> list[str]:
    """The report's sentence on how the scored slides were drawn."""
    if not drawn:
        return []
    if drawn["drawn"] == "all":
        return [f"Every held-out slide is scored ({drawn['held_out']})."]
    strata = drawn["strata"]
    listed = (
        ", ".join(f"{k} {taken} of {size}" for k, (taken, size) in strata.items())
        if len(strata) <= LISTED_STRATA
        else f"{len(strata)} strata, {sum(1 for taken, _ in strata.values() if taken)} of them drawn from"
    )
    return [
        f"Scored a seeded sample of {drawn['scored']} of the {drawn['held_out']} held-out slides (seed "
        f"{drawn['seed']}), stratified by {drawn['stratified_by']}: {listed}."
    ]


def why_no_questions(samples: Sequence[Any], question_probes: int, lexicon: Any = None) -> str:
    """Why a report has no question-following section: what the scored slides allowed asking."""
    if question_probes <= 0:
        return "not asked (question_probes=0)"
    from thinchat.domain.grounded_qa import ASK_KINDS

    if lexicon is None:
        from thinchat.domain.lexicon import load_lexicon

        lexicon = load_lexicon()
    named = {t for s in samples for r in s.references[:1] for t in lexicon.find(r, kinds=set(ASK_KINDS))}
    if not named:
        return (
            f"no grounded question could be asked: the {len(samples)} scored references name no term of the "
            "lexicon (minerals, matrix, cements, alterations)"
        )
    if len(named) == 1:
        return (
            f"no grounded question could be asked: the {len(samples)} scored references all name only "
            f"{next(iter(named))}; a 'no' question and a which-of need a second term among them"
        )
    return f"no grounded question could be asked about the {len(samples)} scored slides"


def not_asked_lines(note: str | None) -> list[str]:
    """The report's question-following heading with the reason it has no scores (``why_no_questions``)."""
    if not note:
        return []
    return [
        "",
        "## Question following (grounded questions about each held-out slide, 0-1)",
        "",
        f"Not scored: {note}.",
    ]
