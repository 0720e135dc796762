"""Question pools: the questions a converted dataset asks and the grounded answer templates.

Why data: the pools (``questions.yaml``) are edited by people who do not write Python, and the same pools
serve conversion (``data_tools/turns.py``: the description question), follow-up turns
(``grounded_qa.py``: facet follow-ups and grounded questions) and the held-out question-following
evaluation, which must ask in the same words the training data did not.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import yaml

from thinchat.errors import DataFormatError

DEFAULT_QUESTIONS = Path(__file__).with_name("questions.yaml")

#: Template keys of the ``grounded`` section (grounded_qa.py fills them in).
GROUNDED_KEYS = (
    "presence", "presence_alteration", "which", "percent", "grain_size", "roundness", "sorting",
    "answer_yes", "answer_no", "answer_no_stated", "answer_which", "answer_percent",
    "probe_presence", "probe_presence_alteration", "probe_which",
)  # fmt: skip


@dataclass(frozen=True)
class QuestionPools:
    describe: dict[str, list[str]]  # lang -> questions asking for the whole description
    facets: dict[str, dict[str, list[str]]]  # facet -> lang -> follow-up questions
    grounded: dict[str, dict[str, list[str]]]  # template key -> lang -> questions or answer templates
    #: lang -> descriptions of a labelled image (``{classes}``); a pools file without them uses the bundled
    labels: dict[str, list[str]] = dataclasses.field(default_factory=dict)


@lru_cache(maxsize=4)
def load_questions(path: str | None = None) -> QuestionPools:
    """Load (and cache) question pools; ``None`` means the bundled ``questions.yaml``."""
    source = Path(path) if path else DEFAULT_QUESTIONS
    data = yaml.safe_load(source.read_text(encoding="utf-8"))
    try:
        describe = {lang: [str(q) for q in data["describe"][lang]] for lang in ("zh", "en")}
        facets = {
            facet: {lang: [str(q) for q in pools[lang]] for lang in ("zh", "en")}
            for facet, pools in data["facets"].items()
        }
        grounded = {
            key: {lang: [str(q) for q in data["grounded"][key][lang]] for lang in ("zh", "en")}
            for key in GROUNDED_KEYS
        }
    except (KeyError, TypeError) as exc:
        raise DataFormatError(
            f"{source}: expected describe.zh/en, facets.<facet>.zh/en and grounded.<key>.zh/en lists "
            f"(keys: {', '.join(GROUNDED_KEYS)}); missing or malformed: {exc}"
        ) from exc
    for lang, questions in describe.items():
        if not questions:
            raise DataFormatError(f"{source}: describe.{lang} is empty")
    for key, langs in grounded.items():
        for lang, questions in langs.items():
            if not questions:
                raise DataFormatError(f"{source}: grounded.{key}.{lang} is empty")
    return QuestionPools(describe, facets, grounded, _label_templates(data, source))


def _label_templates(data: dict, source: Path) -> dict[str, list[str]]:
    """``labels.describe.zh/en`` of ``data``, or the bundled ones when a custom pools file has none."""
    section = data.get("labels") if isinstance(data, dict) else None
    if section is None:
        return load_questions(None).labels if source != DEFAULT_QUESTIONS else {}
    try:
        templates = {lang: [str(t) for t in section["describe"][lang]] for lang in ("zh", "en")}
    except (KeyError, TypeError) as exc:
        raise DataFormatError(
            f"{source}: expected labels.describe.zh/en lists; missing or malformed: {exc}"
        ) from exc
    for lang, items in templates.items():
        if not items or any("{classes}" not in t for t in items):
            raise DataFormatError(f"{source}: labels.describe.{lang} needs templates with {{classes}}")
    return templates
