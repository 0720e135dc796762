"""Term units for the closed-form projector: one gated ridge classifier per domain term.

Why: the linear ridge fit (``projector_init``) points each image token at the average caption of
slides like it, and the LM must still learn, within a few hundred LoRA steps, which direction means
which mineral. Measured on the quickstart's slides, that read-out is where F1 is lost: a linear probe on
the same features names the phases better than the finetuned model does. So hand the LM the names
directly. Each lexicon term seen in the training captions (minerals, matrix, cements, alterations) gets
one hidden unit of Llava's projector: a ridge classifier of "the caption names this term" on the tower
features, shifted to cross 0 at probability 1/2 and steep enough that GELU passes confident presence
and mutes absence; ``linear_2`` maps the unit onto the term's own word embedding. The image tokens of a
slide with calcite then carry the embedding of "calcite", which a pretrained LM already knows how to
copy into an answer. The lexicon is thinchat's domain vocabulary (``thinchat/domain/lexicon.yaml``), so this
works on real captions as it does on synthetic ones; the checkpoint stays a plain Llava.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from thinchat.errors import ConfigError

#: Lexicon kinds that get a unit: the phases a report names (the same kinds the domain score counts).
TERM_KINDS = frozenset({"mineral", "matrix", "cement", "alteration"})

#: Pre-activation at probability 1 is GAIN / 2; GELU(2) = 1.95 passes it, GELU(-2) = -0.05 mutes absence.
GAIN = 4.0


def term_presence(answers: Sequence[str], lexicon: Any = None, min_count: int = 3) -> tuple[list[str], Any]:
    """Term ids named in at least ``min_count`` (and not all) answers, and the 0/1 presence matrix."""
    import torch

    if lexicon is None:
        from thinchat.domain.lexicon import load_lexicon

        lexicon = load_lexicon()
    found = [lexicon.find(a, kinds=set(TERM_KINDS)) for a in answers]
    counts: dict[str, int] = {}
    for terms in found:
        for t in terms:
            counts[t] = counts.get(t, 0) + 1
    keep = sorted(t for t, c in counts.items() if min_count <= c < len(answers))
    presence = torch.tensor([[t in terms for t in keep] for terms in found], dtype=torch.float32)
    return keep, presence.reshape(len(answers), len(keep))


def term_directions(
    term_ids: Sequence[str], answers: Sequence[str], lexicon: Any, tokenizer: Any, embeddings: Any
) -> Any:
    """Unit vectors, one per term: the mean input embedding of the term's name in the captions' language."""
    import torch

    from thinchat.domain.language import is_chinese

    lang = "zh" if sum(is_chinese(a) for a in answers) * 2 > len(answers) else "en"
    table = embeddings.detach().float()
    rows = []
    for term_id in term_ids:
        name = lexicon.name(term_id, lang)
        ids = tokenizer(" " + name if lang == "en" else name, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ConfigError(f"term '{term_id}' ({name!r}) tokenizes to nothing")
        vector = table[ids].mean(0)
        rows.append(vector / vector.norm().clamp_min(1e-12))
    return torch.stack(rows) if rows else torch.zeros(0, table.shape[1])


def load_term_units(
    projector: Any,
    classifier: Any,
    x_mean: Any,
    prior: Any,
    directions: Any,
    token_norm: float,
    first_unit: int,
) -> int:
    """Write the gated term units into hidden units ``first_unit``...; returns how many were written.

    Unit t computes GAIN * (classifier[t] @ (x - x_mean) + prior[t] - 1/2); its GELU, scaled so that
    confident presence outputs ``token_norm``, is added along ``directions[t]``.
    """
    import torch

    k = classifier.shape[0]
    hidden = projector.linear_1.out_features
    if first_unit + k > hidden:
        raise ConfigError(
            f"{k} term units do not fit in the projector's {hidden - first_unit} free hidden units"
        )
    if projector.linear_1.bias is None:
        raise ConfigError("term units need a projector with biases (multimodal_projector_bias)")
    out_scale = token_norm / (GAIN / 2 * 0.5 * (1 + math.erf(GAIN / 2 / math.sqrt(2))))
    units = slice(first_unit, first_unit + k)
    with torch.no_grad():
        projector.linear_1.weight[units] = (GAIN * classifier).to(projector.linear_1.weight.dtype)
        bias = GAIN * (prior - 0.5 - classifier @ x_mean)
        projector.linear_1.bias[units] = bias.to(projector.linear_1.bias.dtype)
        projector.linear_2.weight[:, units] = (out_scale * directions.T).to(projector.linear_2.weight.dtype)
    return k
