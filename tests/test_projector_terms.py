"""Gated term units of the closed-form projector: presence targets, exact unit outputs, the whole fit."""

from __future__ import annotations

import pytest
import torch
from train_helpers import tiny_overrides

from thinchat.errors import ConfigError
from thinchat.model.unwrap import llava_parts
from thinchat.testing import tiny_llava
from thinchat.train.config import load_train_config
from thinchat.train.embeds import project_features
from thinchat.train.projector_init import embedding_norm, init_projector_ridge, load_linear
from thinchat.train.projector_terms import load_term_units, term_directions, term_presence

ANSWERS = [
    "Quartz (about 60%) and calcite cement.",
    "Quartz with zircon.",
    "Calcite (about 80%) forms a mosaic; quartz is rare.",
    "Quartz and calcite.",
    "Mainly quartz; accessory zircon.",
    "Quartz, calcite and zircon.",
]


def test_presence_keeps_terms_that_tell_slides_apart():
    terms, presence = term_presence(ANSWERS)
    # quartz is in every answer (nothing to predict); zircon in 3, calcite in 4; "cement" once (< 3)
    assert terms == ["calcite", "zircon"]
    assert presence.tolist() == [[1, 0], [0, 1], [1, 0], [1, 0], [0, 1], [1, 1]]
    assert term_presence(ANSWERS, min_count=1)[0] == ["calcite", "cement", "zircon"]


def test_term_units_add_the_term_embedding_when_present_and_stay_quiet_when_absent():
    model, processor = tiny_llava(seed=0)
    projector = llava_parts(model)[1].multi_modal_projector
    d_in = projector.linear_1.in_features
    from thinchat.domain.lexicon import load_lexicon

    embeddings = model.get_input_embeddings().weight
    directions = term_directions(
        ["calcite", "zircon"], ANSWERS, load_lexicon(), processor.tokenizer, embeddings
    )
    torch.testing.assert_close(directions.norm(dim=-1), torch.ones(2))
    load_linear(projector, torch.zeros(projector.linear_2.out_features, d_in), torch.zeros(d_in), units=8)
    classifier = torch.zeros(2, d_in)
    classifier[0, 0] = classifier[1, 1] = 1.0  # feature 0 = P(calcite), feature 1 = P(zircon)
    assert load_term_units(projector, classifier, torch.zeros(d_in), torch.zeros(2), directions, 3.0, 8) == 2
    x = torch.zeros(3, d_in)
    x[0, 0] = 1.0  # calcite certain, zircon absent
    x[1, 1] = 1.0  # zircon certain, calcite absent
    with torch.no_grad():
        out = projector(x)
    assert out[0] @ directions[0] == pytest.approx(3.0, rel=0.05)
    torch.testing.assert_close(out[0], 3.0 * directions[0] + out[2], atol=0.15, rtol=0)
    assert out[1] @ directions[1] == pytest.approx(3.0, rel=0.05)
    assert out[2].norm() < 0.05 * 3.0 * 2  # neither: both units muted by the GELU
    with pytest.raises(ConfigError, match="do not fit"):
        load_term_units(projector, classifier, torch.zeros(d_in), torch.zeros(2), directions, 3.0, 10**6)


def test_fit_puts_each_slides_terms_into_its_tokens():
    model, processor = tiny_llava(seed=0)
    model.requires_grad_(False)
    width = llava_parts(model)[1].multi_modal_projector.linear_1.in_features
    g = torch.Generator().manual_seed(0)
    answers = ANSWERS * 4
    terms, signal = term_presence(answers)  # calcite, cement (now 4 times), zircon
    # feature j carries term j, the rest is noise: the fitted classifiers must find it
    features = []
    for row in signal:
        x = torch.randn(2, 4, width, generator=g) * 0.1
        x[..., : len(terms)] += row
        features.append(x)
    stats = init_projector_ridge(model, processor.tokenizer, answers, features, alpha=1.0, terms_alpha=0.01)
    assert stats["terms"] == terms
    from thinchat.domain.lexicon import load_lexicon

    directions = term_directions(
        terms, answers, load_lexicon(), processor.tokenizer, model.get_input_embeddings().weight
    )
    with torch.no_grad():
        tokens = project_features(model, torch.stack(features).reshape(-1, 4, width)).reshape(
            len(answers), -1, directions.shape[1]
        )
    along = tokens.mean(1) @ directions.T / embedding_norm(model, [[0]])
    for j, term in enumerate(terms):  # per term, every slide naming it stands out from every other slide
        present, absent = along[signal[:, j].bool(), j], along[~signal[:, j].bool(), j]
        assert present.min() > absent.max() + 0.3, term


def test_terms_need_the_ridge_init(tmp_path):
    base, data = tmp_path / "base", tmp_path / "data.json"
    overrides = tiny_overrides("projector", base, data, tmp_path / "o")
    with pytest.raises(ConfigError, match="ridge_terms"):
        load_train_config(None, [*overrides, "ridge_terms=true"])
    with pytest.raises(ConfigError, match="terms_alpha"):
        load_train_config(None, [*overrides, "init=ridge", "feature_cache=true", "terms_alpha=0"])
