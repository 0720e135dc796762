"""METEOR, the way published caption tables compute it when possible, and a labelled stand-in otherwise.

Published COCO-style tables use METEOR 1.5 (the Java jar wrapped by pycocoevalcap). It needs ``java``
and takes ~8-10 s to start, so one scorer process is started per evaluation and reused for every
checkpoint and language. Without Java we fall back to nltk's METEOR restricted to exact and Porter-stem
matches (no WordNet synonyms, whose data is not installed here): it is *not* comparable with METEOR 1.5
and the report says so through ``variant``.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence

from thinchat.errors import ThinchatError

METEOR_15 = (
    "METEOR 1.5 (pycocoevalcap meteor-1.5.jar, -l en -norm, on thinchat tokens; on Chinese only exact "
    "character matches can fire: stems/synonyms/paraphrases are English-only)"
)
METEOR_NLTK = (
    "METEOR-nltk-approx (nltk.translate.meteor_score, exact + Porter-stem matching, no WordNet synonyms; "
    "NOT comparable with METEOR 1.5 tables; install java to get METEOR 1.5)"
)


class _NoSynonyms:
    """A WordNet stand-in with no synsets: nltk's METEOR then matches exact words and stems only."""

    @staticmethod
    def synsets(word: str) -> list:
        return []


class MeteorScorer:
    """Corpus METEOR over pre-tokenized (space-joined) strings; ``variant`` names what is computed.

    ``backend`` is ``"auto"`` (METEOR 1.5 if ``java`` is on PATH, else the nltk approximation),
    ``"java"`` (error without Java) or ``"nltk"``.
    """

    def __init__(self, backend: str = "auto") -> None:
        if backend not in ("auto", "java", "nltk"):
            raise ThinchatError(f"unknown METEOR backend {backend!r}; use auto, java or nltk")
        has_java = shutil.which("java") is not None
        if backend == "java" and not has_java:
            raise ThinchatError("METEOR 1.5 needs `java` on PATH; install a JRE or use --meteor nltk")
        self._java = None
        if backend == "java" or (backend == "auto" and has_java):
            from pycocoevalcap.meteor.meteor import Meteor

            self._java = Meteor()
            self.variant = METEOR_15
        else:
            self.variant = METEOR_NLTK

    def score(self, hyps: Mapping[str, str], refs: Mapping[str, Sequence[str]]) -> tuple[float, list[float]]:
        """Return (corpus score, per-sample scores) in [0, 1] for space-joined token strings."""
        ids = list(hyps)
        if self._java is not None:
            # The jar treats '|||' as a field separator; our tokens never contain it after tokenize,
            # but an empty hypothesis must still be a line, so it is sent as is.
            score, scores = self._java.compute_score(
                {i: list(refs[i]) for i in ids}, {i: [hyps[i]] for i in ids}
            )
            return float(score), [float(s) for s in scores]
        from nltk.translate.meteor_score import meteor_score

        scores = [
            float(
                meteor_score(
                    [r.split() for r in refs[i]],
                    hyps[i].split(),
                    preprocess=str,
                    wordnet=_NoSynonyms(),
                )
            )
            for i in ids
        ]
        return (sum(scores) / len(scores) if scores else 0.0), scores

    def close(self) -> None:
        """Stop the Java process now rather than at garbage collection."""
        self._java = None
