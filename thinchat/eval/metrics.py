"""Caption metrics for one corpus (one language), computed by the libraries published tables use.

BLEU-1..4, ROUGE-L and CIDEr-D come from pycocoevalcap's scorers fed thinchat's own tokens (its PTB
tokenizer would leave Chinese unsegmented); METEOR from ``thinchat.eval.meteor``; corpus BLEU and chrF
from sacreBLEU on the raw text with its own tokenizer (``zh`` for Chinese, ``13a`` for English) so the
numbers match anyone else's sacreBLEU run with the same signature; GLEU from nltk on our tokens.
All scores are reported on a 0-100 scale (CIDEr-D x100 as in COCO papers).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence

from thinchat.errors import DataFormatError
from thinchat.eval.meteor import MeteorScorer
from thinchat.eval.tokenize import tokens_str

#: Metric names in report order.
METRIC_NAMES = (
    "BLEU-1",
    "BLEU-2",
    "BLEU-3",
    "BLEU-4",
    "METEOR",
    "ROUGE-L",
    "CIDEr-D",
    "sacreBLEU",
    "chrF",
    "GLEU",
)

SACREBLEU_TOKENIZERS = {"zh": "zh", "en": "13a"}


def check_references(hyps: Mapping[str, str], refs: Mapping[str, Sequence[str]]) -> None:
    """Raise ``DataFormatError`` unless every hypothesis id has at least one non-empty reference."""
    if not refs:
        raise DataFormatError("empty reference set: no sample has a reference answer to score against")
    if set(hyps) != set(refs):
        missing = sorted(set(hyps) - set(refs))[:5]
        extra = sorted(set(refs) - set(hyps))[:5]
        raise DataFormatError(
            f"hypotheses and references do not match: ids without references {missing}, "
            f"references without a hypothesis {extra}; score the same ids on both sides"
        )
    for sid, rs in refs.items():
        if isinstance(rs, str) or not rs or any(not isinstance(r, str) or not r.strip() for r in rs):
            raise DataFormatError(
                f"sample {sid!r}: references must be a non-empty list of non-empty strings, got {rs!r}"
            )


def score_corpus(
    hyps: Mapping[str, str],
    refs: Mapping[str, Sequence[str]],
    lang: str,
    meteor: MeteorScorer | None = None,
) -> dict:
    """Score ``hyps[id]`` against the references ``refs[id]`` (one or more per id) for language ``lang``.

    Returns ``{"scores": {metric: value}, "per_sample": {id: {metric: value}}, "signatures": {...}}``.
    ``meteor`` is shared across calls because METEOR 1.5 starts a JVM; without one, METEOR is left out.
    """
    from nltk.translate.gleu_score import corpus_gleu
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from sacrebleu.metrics import BLEU, CHRF

    check_references(hyps, refs)
    if lang not in SACREBLEU_TOKENIZERS:
        raise DataFormatError(f"unknown language {lang!r}; expected one of {sorted(SACREBLEU_TOKENIZERS)}")
    ids = sorted(hyps)
    tok_h = {i: tokens_str(hyps[i]) for i in ids}
    tok_r = {i: [tokens_str(r) for r in refs[i]] for i in ids}
    res = {i: [tok_h[i]] for i in ids}
    scores: dict[str, float] = {}
    per_sample: dict[str, dict[str, float]] = {i: {} for i in ids}

    with contextlib.redirect_stdout(io.StringIO()):  # BleuScorer prints its length ratios
        bleu, bleu_each = Bleu(4).compute_score(tok_r, res, verbose=0)
    for n in range(4):
        scores[f"BLEU-{n + 1}"] = 100.0 * float(bleu[n])
        for i, s in zip(ids, bleu_each[n], strict=True):
            per_sample[i][f"BLEU-{n + 1}"] = 100.0 * float(s)
    if meteor is not None:
        m, m_each = meteor.score(tok_h, tok_r)
        scores["METEOR"] = 100.0 * m
        for i, s in zip(ids, m_each, strict=True):
            per_sample[i]["METEOR"] = 100.0 * s
    rouge, rouge_each = Rouge().compute_score(tok_r, res)
    scores["ROUGE-L"] = 100.0 * float(rouge)
    cider, cider_each = Cider().compute_score(tok_r, res)
    scores["CIDEr-D"] = 100.0 * float(cider)
    for i, r, c in zip(ids, rouge_each, cider_each, strict=True):
        per_sample[i]["ROUGE-L"] = 100.0 * float(r)
        per_sample[i]["CIDEr-D"] = 100.0 * float(c)

    # sacreBLEU wants reference *streams*; pad ragged reference lists with None (its documented way).
    n_streams = max(len(refs[i]) for i in ids)
    streams = [[refs[i][k] if k < len(refs[i]) else None for i in ids] for k in range(n_streams)]
    sys_out = [hyps[i] for i in ids]
    sb = BLEU(tokenize=SACREBLEU_TOKENIZERS[lang])
    scores["sacreBLEU"] = float(sb.corpus_score(sys_out, streams).score)
    chrf = CHRF()
    scores["chrF"] = float(chrf.corpus_score(sys_out, streams).score)
    scores["GLEU"] = 100.0 * float(
        corpus_gleu([[r.split() for r in tok_r[i]] for i in ids], [tok_h[i].split() for i in ids])
    )
    return {
        "scores": {k: scores[k] for k in METRIC_NAMES if k in scores},
        "per_sample": per_sample,
        "signatures": {
            "sacreBLEU": str(sb.get_signature()),
            "chrF": str(chrf.get_signature()),
            "CIDEr-D": "pycocoevalcap Cider (n=4, sigma=6, clipped, x10), document frequencies from this test set's references",
            "BLEU": "pycocoevalcap Bleu (closest reference length), corpus level",
            "ROUGE-L": "pycocoevalcap Rouge (beta=1.2, max over references), mean over samples",
            "GLEU": "nltk corpus_gleu (n=1..4)",
            "METEOR": meteor.variant if meteor is not None else "not computed",
        },
    }
