"""Bilingual petrography lexicon: which minerals, textures and pores a Chinese or English text names.

The vocabulary lives in ``lexicon.yaml`` (data, not code) so geologists can extend it without touching
Python. The same ids serve the multi-turn facet splitter, the synthetic captions and the evaluation's
mineral-term F1, so ``find`` must be precise: Chinese names match longest first (绢云母化 is
sericitization and not also sericite), English names match case-insensitively on word boundaries, with
plurals and interchangeable hyphen/space (K-feldspar, K feldspar, potassium feldspar).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import yaml

from thinchat.errors import DataFormatError

DEFAULT_LEXICON = Path(__file__).with_name("lexicon.yaml")


@dataclass(frozen=True)
class Term:
    """One concept: a canonical id with its Chinese and English names."""

    id: str
    zh: list[str]
    en: list[str]
    kind: str  # mineral | matrix | cement | alteration | texture | grain_size | pore | optics | rock | group
    facet: str  # composition, matrix, carbonate, silica, feldspar_alteration, accessory, fabric, ...
    #: Ids of wider terms this one implies (plagioclase -> feldspar): a report naming plagioclase has
    #: feldspar, so grounded questions never ask "is feldspar present?" expecting "no" there.
    broader: tuple[str, ...] = ()


@dataclass(frozen=True)
class Span:
    """A term occurrence: ``text[start:end]`` names ``term_id``; ``negated`` for 未见黄铁矿 / "no pyrite"."""

    start: int
    end: int
    term_id: str
    negated: bool = False


# A negation cue right before a term ("未见明显定向性", "no obvious preferred orientation"); a term joined to a
# negated one by a list separator ("未见黄铁矿、锆石", "no pyrite or zircon") is negated too. 无色 is not a cue.
_ZH_NEG = re.compile(r"(?:未见|未发现|不见|没有|不含|缺乏|缺少|无)(?:明显的?|任何)?$")
_EN_NEG = re.compile(
    r"(?<![A-Za-z])(?:no|without|absence of|absent|lack of|lacks|not|free of)\s+"
    r"(?:(?:obvious|visible|apparent|significant|clear|any)\s+)?$",
    re.IGNORECASE,
)
_LIST_GAP = re.compile(r"^(?:、|和|及|与|或|/|\s+(?:and|or|nor)\s+|,\s+(?:or|nor)\s+)$")


def _english_pattern(name: str) -> str:
    """Regex for an English name: hyphen/space optional between parts, plural on the last word."""
    parts = [p for p in re.split(r"[-\s]+", name.strip()) if p]
    body = r"[-\s]*".join(re.escape(p) for p in parts)
    return body + r"(?:e?s)?"


@dataclass
class Lexicon:
    """The loaded lexicon with compiled matchers; build it with :func:`load_lexicon`."""

    terms: list[Term]
    by_id: dict[str, Term] = field(init=False)
    _zh_re: re.Pattern[str] = field(init=False, repr=False)
    _en_re: re.Pattern[str] = field(init=False, repr=False)
    _zh_ids: dict[str, str] = field(init=False, repr=False)
    _en_ids: dict[str, str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.by_id = {t.id: t for t in self.terms}
        self._zh_ids = {}
        self._en_ids = {}
        for term in self.terms:
            for name in term.zh:
                self._zh_ids.setdefault(name, term.id)
            for name in term.en:
                key = re.sub(r"[-\s]+", "", name.lower())
                self._en_ids.setdefault(key, term.id)
        zh_names = sorted(self._zh_ids, key=len, reverse=True)
        self._zh_re = re.compile("|".join(re.escape(n) for n in zh_names))
        en_names = sorted({n for t in self.terms for n in t.en}, key=len, reverse=True)
        alternation = "|".join(f"(?:{_english_pattern(n)})" for n in en_names)
        self._en_re = re.compile(rf"(?<![A-Za-z0-9])(?:{alternation})(?![A-Za-z0-9])", re.IGNORECASE)

    def _english_id(self, matched: str) -> str | None:
        key = re.sub(r"[-\s]+", "", matched.lower())
        for candidate in (key, key[:-1], key[:-2]):
            if candidate in self._en_ids:
                return self._en_ids[candidate]
        return None

    def find_spans(self, text: str) -> list[Span]:
        """All term occurrences in ``text``, in order of position (Chinese and English together)."""
        raw = [(m.start(), m.end(), self._zh_ids[m.group()]) for m in self._zh_re.finditer(text)]
        for m in self._en_re.finditer(text):
            term_id = self._english_id(m.group())
            if term_id is not None:
                raw.append((m.start(), m.end(), term_id))
        spans: list[Span] = []
        for start, end, term_id in sorted(raw):
            before = text[max(0, start - 40) : start]
            negated = bool(_ZH_NEG.search(before) or _EN_NEG.search(before))
            if not negated and spans and spans[-1].negated:
                negated = bool(_LIST_GAP.match(text[spans[-1].end : start]))
            spans.append(Span(start, end, term_id, negated))
        return spans

    def find(self, text: str, kinds: set[str] | None = None, include_negated: bool = False) -> set[str]:
        """Canonical ids named in ``text``; ``kinds`` (e.g. ``{"mineral"}``) restricts the term kinds.

        Terms stated as absent (未见黄铁矿, "no pyrite", 无明显定向性) are left out unless ``include_negated``.
        """
        ids = {s.term_id for s in self.find_spans(text) if include_negated or not s.negated}
        if kinds is not None:
            ids = {i for i in ids if self.by_id[i].kind in kinds}
        return ids

    def name(self, term_id: str, lang: str) -> str:
        """The preferred (first) name of a term in ``lang`` ("zh" or "en")."""
        term = self.by_id[term_id]
        names = term.zh if lang == "zh" else term.en
        return (names or term.en or term.zh)[0]  # a term named in one language only keeps that name

    def facet(self, term_id: str) -> str:
        return self.by_id[term_id].facet

    def with_broader(self, term_ids: set[str]) -> set[str]:
        """``term_ids`` plus every wider term they imply, transitively (plagioclase -> feldspar)."""
        out, todo = set(term_ids), list(term_ids)
        while todo:
            term = self.by_id.get(todo.pop())
            for wider in term.broader if term else ():
                if wider not in out:
                    out.add(wider)
                    todo.append(wider)
        return out

    @property
    def umbrella_ids(self) -> set[str]:
        """Terms some other term names as ``broader``: too wide to be a clean "no" or a which-of option."""
        return {wider for term in self.terms for wider in term.broader}


def _term_lines(text: str) -> list[int]:
    """1-based line of each item of the top-level ``terms`` list, for error messages."""
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return []
    if not isinstance(root, yaml.MappingNode):
        return []
    for key, value in root.value:
        if key.value == "terms" and isinstance(value, yaml.SequenceNode):
            return [item.start_mark.line + 1 for item in value.value]
    return []


def _parse(data: object, source: str, lines: list[int] | None = None) -> list[Term]:
    if not isinstance(data, dict) or not isinstance(data.get("terms"), list):
        raise DataFormatError(f"{source}: expected a mapping with a 'terms' list")
    terms: list[Term] = []
    seen: set[str] = set()
    lines = lines or []
    for index, item in enumerate(data["terms"]):
        line = f":{lines[index]}" if index < len(lines) else ""
        where = f"{source}{line}: terms[{index}]"
        if not isinstance(item, dict):
            raise DataFormatError(f"{where}: expected a mapping with id, kind, facet, zh, en")
        missing = [k for k in ("id", "kind", "facet", "zh", "en") if k not in item]
        if missing:
            raise DataFormatError(f"{where}: missing {', '.join(missing)}")
        if item["id"] in seen:
            raise DataFormatError(f"{where}: duplicate id {item['id']!r}; ids must be unique")
        seen.add(item["id"])
        zh = [str(n) for n in item["zh"]]
        en = [str(n) for n in item["en"]]
        if not zh and not en:
            raise DataFormatError(f"{where}: term {item['id']!r} has no names")
        broader = item.get("broader", [])
        if not isinstance(broader, list) or not all(isinstance(b, str) for b in broader):
            raise DataFormatError(f"{where}: 'broader' must be a list of term ids, got {broader!r}")
        terms.append(Term(str(item["id"]), zh, en, str(item["kind"]), str(item["facet"]), tuple(broader)))
    ids = {t.id for t in terms}
    for index, term in enumerate(terms):
        unknown = [b for b in term.broader if b not in ids]
        if unknown:
            line = f":{lines[index]}" if index < len(lines) else ""
            raise DataFormatError(
                f"{source}{line}: terms[{index}] ({term.id}): broader names unknown id(s) {', '.join(unknown)}"
            )
    return terms


@lru_cache(maxsize=8)
def _load_cached(path: str) -> Lexicon:
    text = Path(path).read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise DataFormatError(f"{path}{line}: not valid YAML ({getattr(exc, 'problem', exc)})") from exc
    return Lexicon(_parse(data, path, _term_lines(text)))


def load_lexicon(path: Path | None = None) -> Lexicon:
    """Load (and cache) the lexicon; ``None`` means the bundled ``thinchat/domain/lexicon.yaml``."""
    target = Path(path) if path is not None else DEFAULT_LEXICON
    if not target.is_file():
        raise DataFormatError(f"{target}: lexicon file not found")
    return _load_cached(str(target.resolve()))
