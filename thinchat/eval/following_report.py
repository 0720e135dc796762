"""The question-following section of the report: scores asked directly and looking first, where the
yes/no answers go wrong (by the term's share and per term) and per question wording.

Why apart from ``report``: it is the largest section and its own concept (how the model answers the
questions asked); ``report`` lays the sections out.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping


def fmt_value(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


#: Question-following rows of the report: (label, key in each language's scores).
FOLLOWING_ROWS = (
    ("yes/no accuracy (balanced), asked directly", "yes_no_accuracy"),
    ("  on 'yes' questions", "yes_accuracy"),
    ("  on 'no' questions", "no_accuracy"),
    ("answered in the form asked", "answer_form"),
    ("which-of accuracy, asked directly", "which_accuracy"),
)
#: Rows of the same questions asked looking first (as every interface asks), shown when they were asked
#: (not of ClipCap models), and how far the answers agree with the model's own reading of the slide.
FOLLOWUP_ROWS = (
    ("yes/no accuracy, looking first (as every interface answers)", "followup_yes_no_accuracy"),
    ("  on 'yes' questions", "followup_yes_accuracy"),
    ("  on 'no' questions", "followup_no_accuracy"),
    ("which-of accuracy, looking first", "followup_which_accuracy"),
    ("yes/no read off its own description (names the term: yes)", "description_yes_no_accuracy"),
    ("answers agreeing with its own description: looking first", "followup_consistency"),
    ("  asked directly", "alone_consistency"),
    ("answers agreeing with its own which-of answer: looking first", "followup_which_consistency"),
    ("  asked directly", "alone_which_consistency"),
)
#: Rows left out when no model has them (computed only with the descriptions at hand).
FOLLOWUP_OPTIONAL = frozenset(
    {
        "description_yes_no_accuracy",
        "followup_consistency",
        "alone_consistency",
        "followup_which_consistency",
        "alone_which_consistency",
    }
)


def following_lines(following: dict | None, names: list[str], head: str) -> list[str]:
    """Question following per language: does the model answer the question asked, and rightly?"""
    if not following:
        return []
    lines = ["", "## Question following (grounded questions about each held-out slide, 0-1)"]
    first = next(iter(following.values()))
    for lang in [k for k in first if k != "all"] + ["all"]:
        if lang == "all" and len(first) == 2:
            continue  # one language: "all" repeats it
        counts = first[lang]
        lines += [
            "",
            f"### {lang} ({counts['n_yes']} yes, {counts['n_no']} no, {counts['n_which']} which-of)",
        ]
        lines += ["", head]
        asked = any(following[n][lang].get("followup_yes_no_accuracy") is not None for n in names)
        for label, key in FOLLOWING_ROWS + (FOLLOWUP_ROWS if asked else ()):
            values = [following[n][lang].get(key) for n in names]
            if key in FOLLOWUP_OPTIONAL and all(v is None for v in values):
                continue
            lines.append(f"| {label} | " + " | ".join(fmt_value(v, 3) for v in values) + " |")
        lines += _presence_detail_lines({n: following[n][lang] for n in names}, asked)
        lines += _wording_lines({n: following[n][lang] for n in names}, asked)
    lines += [
        "",
        "Presence questions ask about terms the slide's reference report names (right answer: yes) and, as "
        "many, about terms other test reports name but this one does not (right answer: no, meaning 'not "
        "in the report'). Balanced accuracy averages the two, so always answering 'yes' scores 0.5. An "
        "answer counts in the form asked when it starts with yes/no (是/否/有/没有). A which-of answer is "
        "right when the first option it names is the one in the report. The same questions are asked once "
        "directly after the images and once looking first, after the model's own description of the slide, "
        "as the chat demos, the server and captioning answer them; both are compared with what that "
        "description says (it names the term: yes) and with the model's which-of answer where that "
        "question offered the term. Per wording, a model that gives one answer to >= 90% of a wording's "
        "questions (marked 'same') answers the wording, not the slide. "
        "The 'yes' questions are also sorted by the share of the slide the report gives the "
        "term (a model that sees only the large phases misses the minor ones), and each term gets its "
        "right answers on 'yes' and on 'no' questions. Every question and both answers are in "
        "questions_<name>.jsonl.",
    ]
    return lines


def _presence_detail_lines(scores: Mapping[str, dict], asked: bool) -> list[str]:
    """Where the yes/no answers go wrong: "yes" questions by the term's stated share, and per term."""
    names = list(scores)
    first = scores[names[0]]
    bins = list(first.get("yes_by_share") or {})
    terms = list(first.get("presence_by_term") or {})
    if not bins and not terms:
        return []
    lines = _asked_both_ways_table(
        scores,
        asked,
        "'yes' questions by the term's share in the report",
        "yes_by_share",
        lambda cell: f"{cell['accuracy']:.3f} ({cell['n']})",
    )

    def right(counts: list[int]) -> str:
        return f"{counts[0]}/{counts[1]}" if counts[1] else "-"

    lines += [
        "",
        "| term: right / asked | " + " | ".join(f"{n}, 'yes' | {n}, 'no'" for n in names) + " |",
        "|---|" + "---:|" * (2 * len(names)),
    ]
    for term in terms:
        cells = []
        for n in names:
            counts = (scores[n].get("presence_by_term") or {}).get(term)
            cells += [right(counts["yes"]), right(counts["no"])] if counts else ["-", "-"]
        lines.append(f"| {term} | " + " | ".join(cells) + " |")
    return lines


def _asked_both_ways_table(
    scores: Mapping[str, dict], asked: bool, title: str, key: str, show: Callable[[dict], str]
) -> list[str]:
    """A table of ``scores[name][key][row]`` per row, one column per model, asked directly and (when
    ``asked``) looking first (``followup_<key>``); ``show`` formats a cell."""
    names = list(scores)
    rows = list(scores[names[0]].get(key) or {})
    prefixes = ("", "followup_") if asked else ("",)
    head = f"| {title} | " + " | ".join(
        f"{n}{', looking first' if prefix else ''}" for prefix in prefixes for n in names
    )
    lines = ["", head + " |", "|---|" + "---:|" * (len(names) * len(prefixes))]
    for row in rows:
        cells = [
            show(cell) if (cell := (scores[n].get(f"{prefix}{key}") or {}).get(row)) else "-"
            for prefix in prefixes
            for n in names
        ]
        lines.append(f"| {str(row).replace('|', '/')} | " + " | ".join(cells) + " |")
    return lines


def _wording_lines(scores: Mapping[str, dict], asked: bool) -> list[str]:
    """Balanced yes/no accuracy and the share answered "yes" per question wording (template)."""
    if not scores[next(iter(scores))].get("by_wording"):
        return []
    return _asked_both_ways_table(
        scores,
        asked,
        "wording: balanced (said 'yes')",
        "by_wording",
        lambda c: (
            f"{fmt_value(c['yes_no_accuracy'], 3)} ({c['said_yes']:.2f}{' same' if c['same_answer'] else ''})"
        ),
    )
