"""Captions -> LLaVA conversation turns: the opening description exchange, and where each turn goes.

Every turn after the description (``--multi-turn`` facet follow-ups, ``--qa-turns`` grounded questions)
comes from one generator, ``thinchat.domain.grounded_qa.GroundedQA``; ``convert_entries`` appends its
items after this description. Why the split: the opening question and the placement of the images are
the converter's LLaVA format, while the follow-ups are domain knowledge the evaluation asks too.
Questions are drawn from pools kept as data (``thinchat/domain/questions.yaml``), deterministically per
(seed, entry id).
"""

from __future__ import annotations

import random

from thinchat.domain.questions import QuestionPools, load_questions

#: ``(type, question, answer)``: one human question and the assistant's answer.
Exchange = tuple[str, str, str]


def describe_exchange(
    caption: str, lang: str, rng: random.Random, pools: QuestionPools | None = None
) -> Exchange:
    """The description exchange: a question from the ``describe`` pool, answered with the whole caption."""
    pools = pools or load_questions()
    return ("describe", rng.choice(pools.describe[lang]), caption)


def place_turns(
    exchanges: list[Exchange],
    n_images: int,
    rng: random.Random | None = None,
    describe_first: float = 0.0,
) -> tuple[list[dict[str, str]], list[str]]:
    """LLaVA ``conversations`` and the type of each exchange; shuffled when ``rng`` is given.

    The images always go with the first human turn, whichever question comes first, so a grounded
    question is trained both as an opening question and as a follow-up after the description.
    ``describe_first`` is the share of shuffled conversations whose description exchange is then moved
    to the front: the layout every interface answers in (it looks first, ``thinchat.chat.look``), so
    the questions after it learn to follow the description.
    """
    order = list(exchanges)
    if rng is not None:
        rng.shuffle(order)
        if describe_first > 0 and rng.random() < describe_first:
            kinds = [kind for kind, _, _ in order]
            if "describe" in kinds:
                order.insert(0, order.pop(kinds.index("describe")))
    turns: list[dict[str, str]] = []
    for k, (_, question, answer) in enumerate(order):
        turns.append({"from": "human", "value": ("<image>\n" * n_images if k == 0 else "") + question})
        turns.append({"from": "gpt", "value": answer})
    return turns, [kind for kind, _, _ in order]


def build_conversation(
    caption: str, lang: str, n_images: int, rng: random.Random, pools: QuestionPools | None = None
) -> list[dict[str, str]]:
    """LLaVA ``conversations`` holding the description turn only (``import-clipcap``'s entries)."""
    return place_turns([describe_exchange(caption, lang, rng, pools)], n_images)[0]
