"""Tokenization used by every n-gram metric in thinchat's evaluation.

Chinese is not written with spaces, so feeding raw Chinese to whitespace-based scorers (pycocoevalcap,
rouge-score) makes each clause one "word" and BLEU collapses to ~0. We therefore score Chinese one token
per Han character (what sacreBLEU's ``zh`` tokenizer and published Chinese captioning tables do) while
keeping ASCII runs such as ``0.25mm``, ``SiO2`` or ``K-feldspar`` whole, and English one token per word.
Everything is lowercased and punctuation is removed, as the COCO caption pipeline does after its PTB
tokenizer, so BLEU/ROUGE-L/CIDEr-D stay comparable with COCO-style tables. The exact rule is written into
every report (``TOKENIZATION``).
"""

from __future__ import annotations

import re

#: Han ideographs (CJK unified + extension A + compatibility): one token per character.
_HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
#: An ASCII word: letters/digits, optionally joined by ``.``, ``-``, ``'`` or ``/`` (0.25mm, K-feldspar, 1/3).
_ASCII_WORD = r"[0-9A-Za-z]+(?:[.\-'/][0-9A-Za-z]+)*"
_TOKEN_RE = re.compile(rf"[{_HAN}]|{_ASCII_WORD}|\S", re.UNICODE)

#: Punctuation removed after splitting (ASCII and full-width/CJK). Symbols such as % or ~ are kept.
PUNCTUATION = frozenset(".,;:!?\"'`()[]{}<>-_/\\|…—–·，。、；：？！“”‘’（）《》〈〉【】「」『』〔〕﹑．～")

#: Human-readable description of the rule, written into report.json and report.md.
TOKENIZATION = (
    "thinchat-v1: Chinese one token per Han character; ASCII runs of letters/digits (joined by . - ' /) "
    "kept whole, e.g. '0.25mm', 'sio2', 'k-feldspar'; English one token per word; every other "
    "non-space character is its own token; all text lowercased; punctuation (ASCII and full-width "
    "，。、；：？！“”（）《》 etc.) removed; % and other symbols kept. The same tokens feed BLEU, "
    "ROUGE-L, CIDEr-D, METEOR and GLEU; sacreBLEU and chrF use their own tokenizers (see signatures)."
)


def tokenize(text: str) -> list[str]:
    """Split ``text`` into lowercased metric tokens (see ``TOKENIZATION``)."""
    return [tok for tok in _TOKEN_RE.findall(text.lower()) if tok not in PUNCTUATION]


def tokens_str(text: str) -> str:
    """The space-joined token string that pycocoevalcap's scorers expect as pre-tokenized input."""
    return " ".join(tokenize(text))
