"""Which language a text is in: the one rule every part of thinchat uses (data conversion, the look
question, evaluation references without a ``lang``, class names).

Why one rule: petrographic text mixes scripts ("石英约占45%, K-feldspar 少见"; "Quartz (石英) ..."), and
three rules gave three answers for the same caption. A text is Chinese when Han characters make up at
least a fifth of its letters, so a Chinese report with mineral names in English stays Chinese and an
English one quoting a Chinese name stays English.
"""

from __future__ import annotations

import re

#: Han ideographs: CJK unified, extension A, compatibility.
HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_HAN_RE = re.compile(rf"[{HAN}]")
#: The share of letters that must be Han for a text to count as Chinese.
CHINESE_SHARE = 0.2


def is_chinese(text: str, threshold: float = CHINESE_SHARE) -> bool:
    """True when Han characters make up at least ``threshold`` of the letters (mixed text counts)."""
    letters = sum(1 for ch in text if ch.isalpha())
    if not letters:
        return False
    return len(_HAN_RE.findall(text)) / letters >= threshold


def language_of(text: str) -> str:
    """``"zh"`` or ``"en"`` for ``text`` (see :func:`is_chinese`)."""
    return "zh" if is_chinese(text) else "en"
