"""Closed-form stage 1: fit the projector by ridge regression instead of (or before) gradient descent.

Why: LLaVA aligns its projector on 558k captioned images. With a few hundred slides and a CPU budget
of minutes, gradient descent through the frozen LM learns the caption *format* (and blows the projected
tokens up into a direction shared by every image) long before it learns to tell slides apart; the
finetuned model then writes the typical report whatever the slide (see the image-reliance check in
``thinchat.eval.image_reliance``). Yet the tower features do separate the slides linearly. So fit the
projector directly: regress each training image's mean tower feature onto an embedding of its caption,
the IDF-weighted mean of the LM's input embeddings of the caption's tokens, centred, so what is fitted is
how a slide's caption differs from the average one. The projected tokens then point at the words their
slide is described with, at the LM's own embedding scale, and stage 2 starts from a projector whose
output already depends on the slide.

The fitted map is linear; Llava's ``mlp2x_gelu`` projector represents it exactly through the identity
gelu(z) - gelu(-z) = z: ``linear_1`` holds +A and -A (rank up to half the LM width), ``linear_2`` +B and -B.
The checkpoint stays a plain ``LlavaForConditionalGeneration``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

from thinchat.errors import ConfigError, DataFormatError


def caption_embeddings(token_ids: Sequence[Sequence[int]], embeddings: Any) -> Any:
    """One vector per caption: the IDF-weighted mean of the input embeddings of its distinct tokens.

    Tokens in every caption (template words, punctuation) get weight 0; tokens specific to a few
    slides (mineral names, rare textures) dominate.
    """
    import torch

    n = len(token_ids)
    document_freq = Counter(t for row in token_ids for t in set(row))
    table = embeddings.detach().float()
    out = torch.zeros(n, table.shape[1])
    for i, row in enumerate(token_ids):
        distinct = sorted(set(row))
        weights = torch.tensor([math.log(n / document_freq[t]) for t in distinct])
        if distinct and float(weights.sum()) > 0:
            out[i] = (weights[:, None] * table[distinct]).sum(0) / weights.sum()
    return out


def fit_ridge(features: Any, targets: Any, alpha: float) -> tuple[Any, Any, float]:
    """``W`` (targets x features), the feature mean, and the training R^2 of ``targets - mean``.

    ``alpha`` is relative: the penalty is alpha times the mean eigenvalue of the centred Gram matrix,
    so one value works whatever the feature scale.
    """
    import torch

    x_mean = features.mean(0)
    xc = features - x_mean
    yc = targets - targets.mean(0)
    gram = xc.T @ xc
    penalty = alpha * float(gram.trace()) / gram.shape[0]
    weight = torch.linalg.solve(gram + penalty * torch.eye(gram.shape[0]), xc.T @ yc).T
    residual = float(((xc @ weight.T - yc) ** 2).sum())
    total = float((yc**2).sum())
    return weight, x_mean, 1.0 - residual / total if total > 0 else 0.0


def load_linear(projector: Any, weight: Any, x_mean: Any, units: int | None = None) -> int:
    """Make ``projector`` (Linear-GELU-Linear) compute ``weight @ (x - x_mean)``; returns the rank kept.

    The map uses the first ``units`` hidden units (all by default); the others are zeroed.
    """
    import torch

    hidden = projector.linear_1.out_features
    units = hidden if units is None else units
    if projector.linear_2.in_features != hidden or hidden < 2 or not 2 <= units <= hidden:
        raise ConfigError("ridge projector init needs Llava's Linear-GELU-Linear projector")
    u, s, vh = torch.linalg.svd(weight, full_matrices=False)
    half = units // 2
    rank = min(half, s.shape[0])
    a = s[:rank, None] * vh[:rank]  # (rank, vision)
    b = u[:, :rank]  # (text, rank)
    w1 = torch.zeros_like(projector.linear_1.weight, dtype=torch.float32)
    w2 = torch.zeros_like(projector.linear_2.weight, dtype=torch.float32)
    b1 = torch.zeros(hidden)
    w1[:rank], w1[half : half + rank] = a, -a
    b1[:rank], b1[half : half + rank] = -(a @ x_mean), a @ x_mean
    w2[:, :rank], w2[:, half : half + rank] = b, -b
    with torch.no_grad():
        projector.linear_1.weight.copy_(w1)
        projector.linear_2.weight.copy_(w2)
        if projector.linear_1.bias is not None:
            projector.linear_1.bias.copy_(b1)
        elif float(b1.abs().max()) > 0:
            raise ConfigError(
                "ridge projector init needs a projector with biases (multimodal_projector_bias)"
            )
        if projector.linear_2.bias is not None:
            projector.linear_2.bias.zero_()
    return rank


def embedding_norm(llava: Any, token_ids: Sequence[Sequence[int]]) -> float:
    """Median norm of a token embedding *as the LM receives it*.

    The median runs over the whole table; the ratio of the embedding module's output to its raw weights
    (measured on the captions' tokens) carries any scale the module applies, e.g. Gemma's sqrt(hidden).
    """
    import torch

    module = llava.get_input_embeddings()
    weight = module.weight.detach().float()
    ids = torch.tensor(sorted({t for row in token_ids for t in row}) or [0], device=module.weight.device)
    with torch.no_grad():
        fed = module(ids).float().norm(dim=-1)
    raw = weight[ids.cpu()].norm(dim=-1)
    ratio = float(fed.median().cpu()) / max(float(raw.median()), 1e-12)
    return float(weight.norm(dim=-1).median()) * ratio


def init_projector_ridge(
    model: Any,
    tokenizer: Any,
    answers: Sequence[str],
    features: Sequence[Any],
    alpha: float = 1.0,
    terms_alpha: float | None = None,
    rows_per_answer: int = 1,
) -> dict[str, Any]:
    """Fit and load the projector from ``features[i]`` (tower features of sample i's images) and ``answers[i]``.

    ``rows_per_answer`` > 1: ``features`` holds that many rows per answer, answer i's at
    ``i * rows_per_answer ...`` (a slide's rotations and flips, ``rotations: true``); the answers' own
    statistics (caption weights, which terms) stay those of the distinct answers. The fitted outputs are rescaled so a projected token has the median norm of the LM's token
    embeddings as the LM receives them (``embedding_norm``). With ``terms_alpha`` set, hidden units are
    also given to gated per-term classifiers fitted with that penalty (``projector_terms``). Returns the
    fit statistics (samples, R^2, rank, scale, terms) for the log.
    """
    import torch

    from thinchat.model.projector import pixel_shuffle, shuffle_factor
    from thinchat.model.unwrap import llava_parts

    if len(answers) * rows_per_answer != len(features) or len(answers) < 2:
        raise DataFormatError(
            f"ridge projector init needs at least 2 samples with images and an answer, got {len(answers)} "
            f"answers and {len(features)} feature rows ({rows_per_answer} per answer)"
        )
    llava, inner = llava_parts(model)
    factor = shuffle_factor(llava.config)
    if factor > 1:  # fit in the projector's own input space: the pixel-shuffled tokens
        features = [pixel_shuffle(f.float().reshape(-1, *f.shape[-2:]), factor) for f in features]
    embeddings = llava.get_input_embeddings().weight
    token_ids = [tokenizer(a, add_special_tokens=False)["input_ids"] for a in answers]
    targets = caption_embeddings(token_ids, embeddings).repeat_interleave(rows_per_answer, dim=0)
    pooled = torch.stack([f.float().reshape(-1, f.shape[-1]).mean(0) for f in features])
    weight, x_mean, r2 = fit_ridge(pooled, targets, alpha)
    tokens = torch.cat([f.float().reshape(-1, f.shape[-1]) for f in features[:64]])
    projected_norm = float(((tokens - x_mean) @ weight.T).norm(dim=-1).mean())
    token_norm = embedding_norm(llava, token_ids)
    scale = token_norm / max(projected_norm, 1e-12)
    projector = inner.multi_modal_projector
    term_ids: list[str] = []
    if terms_alpha is not None:
        from thinchat.train.projector_terms import term_presence

        term_ids, presence = term_presence(answers)
    units = projector.linear_1.out_features - len(term_ids)
    rank = load_linear(projector, weight * scale, x_mean, units=units)
    stats: dict[str, Any] = {
        "samples": len(answers),
        "rows": len(features),
        "r2": round(r2, 4),
        "rank": rank,
        "scale": round(scale, 4),
    }
    if term_ids:
        from thinchat.domain.lexicon import load_lexicon
        from thinchat.train.projector_terms import load_term_units, term_directions

        presence = presence.repeat_interleave(rows_per_answer, dim=0)
        classifier, _, _ = fit_ridge(pooled, presence, terms_alpha)
        directions = term_directions(term_ids, answers, load_lexicon(), tokenizer, embeddings)
        load_term_units(projector, classifier, x_mean, presence.mean(0), directions, token_norm, units)
        stats["terms"] = term_ids
    return stats
