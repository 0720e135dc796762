"""Closed-form stage 1 (init: ridge): exact linear map through the GELU MLP, the fit, the training path."""

from __future__ import annotations

import pytest
import torch
from train_helpers import MINERALS, save_tiny, tiny_overrides, write_dataset

from thinchat.errors import ConfigError
from thinchat.model.loading import load_pretrained
from thinchat.model.unwrap import llava_parts
from thinchat.testing import tiny_llava
from thinchat.train.config import load_train_config
from thinchat.train.embeds import project_features, tower_features
from thinchat.train.projector_init import caption_embeddings, fit_ridge, load_linear
from thinchat.train.run import train


def test_gelu_mlp_represents_the_linear_map_exactly():
    model, _ = tiny_llava(seed=0)
    projector = llava_parts(model)[1].multi_modal_projector
    d_in, d_out = projector.linear_1.in_features, projector.linear_2.out_features
    g = torch.Generator().manual_seed(0)
    rank = min(projector.linear_1.out_features // 2, d_in, d_out)
    weight = torch.randn(d_out, rank, generator=g) @ torch.randn(rank, d_in, generator=g)
    mean = torch.randn(d_in, generator=g)
    assert load_linear(projector, weight, mean) == rank
    x = torch.randn(5, d_in, generator=g)
    with torch.no_grad():
        got = projector(x)
    torch.testing.assert_close(got, (x - mean) @ weight.T, atol=1e-4, rtol=1e-4)


def test_ridge_recovers_a_linear_map():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(200, 8, generator=g)
    true = torch.randn(3, 8, generator=g)
    y = x @ true.T + 5.0
    weight, mean, r2 = fit_ridge(x, y, alpha=1e-6)
    torch.testing.assert_close(weight, true, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(mean, x.mean(0))
    assert r2 > 0.9999
    _, _, r2_heavy = fit_ridge(x, y, alpha=100.0)
    assert r2_heavy < 0.5  # the penalty is relative to the features' scale: alpha 100 shrinks hard


def test_caption_embedding_ignores_tokens_every_caption_has():
    table = torch.eye(6)
    rows = [[0, 1, 2], [0, 1, 3], [0, 1, 3]]  # tokens 0 and 1 are in every caption
    out = caption_embeddings(rows, table)
    torch.testing.assert_close(out[0], table[2])  # only its own distinctive token is left
    torch.testing.assert_close(out[1], table[3])
    assert caption_embeddings([[0], [0]], table).abs().sum() == 0  # nothing distinctive: zero vector


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    root = tmp_path_factory.mktemp("ridge")
    data = write_dataset(root / "data", n=16)
    base = save_tiny(root / "base")
    overrides = tiny_overrides("projector", base, data, root / "out", max_steps=0, feature_cache=True)
    config = load_train_config(None, [*overrides, "init=ridge", f"feature_cache_dir={root / 'cache'}"])
    return train(config), base, data


def test_closed_form_stage_writes_a_llava_whose_tokens_point_at_their_caption(fitted):
    out, base, data = fitted
    assert (out / "config.json").is_file() and not list(out.glob("checkpoint-*"))
    model, processor = load_pretrained(out)
    before, _ = load_pretrained(base)
    from thinchat.images import load_image

    images = sorted((data.parent / "images").glob("train_*_ppl.png"))[: len(MINERALS)]
    pixels = processor.image_processor([load_image(p) for p in images], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        tokens = project_features(model, tower_features(model, pixels)).mean(1)
        old = project_features(before, tower_features(before, pixels)).mean(1)
    assert not torch.allclose(tokens, old)
    embeddings = model.get_input_embeddings().weight
    names = [f"Mainly {en}. 主要为{zh}。" for en, zh in MINERALS]
    ids = [processor.tokenizer(n, add_special_tokens=False)["input_ids"] for n in names]
    targets = caption_embeddings(ids, embeddings)
    targets = targets - targets.mean(0)
    similarity = torch.nn.functional.cosine_similarity(tokens[:, None], targets[None], dim=-1)
    assert similarity.argmax(1).tolist() == list(range(len(MINERALS)))  # slide i is closest to caption i


def test_zero_steps_only_for_the_closed_form(tmp_path):
    base, data = tmp_path / "base", tmp_path / "data.json"
    with pytest.raises(ConfigError, match="max_steps=0"):
        load_train_config(None, tiny_overrides("projector", base, data, tmp_path / "o", max_steps=0))
    with pytest.raises(ConfigError, match="feature_cache"):
        load_train_config(None, [*tiny_overrides("projector", base, data, tmp_path / "o"), "init=ridge"])


@pytest.mark.parametrize("lm", ["llama", "gemma3"])
def test_projected_tokens_get_the_norm_the_lm_feeds_its_text_with(lm, tmp_path):
    from thinchat.train.projector_init import embedding_norm, init_projector_ridge

    model, processor = tiny_llava(lm, seed=0)
    model.requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    width = llava_parts(model)[1].multi_modal_projector.linear_1.in_features
    features = [torch.randn(2, 4, width, generator=g) for _ in range(8)]
    answers = [f"Mainly {MINERALS[i % 4][0]}." for i in range(8)]
    init_projector_ridge(model, processor.tokenizer, answers, features)
    with torch.no_grad():
        tokens = project_features(model, torch.cat(features))
    ids = [processor.tokenizer(a, add_special_tokens=False)["input_ids"] for a in answers]
    target = embedding_norm(model, ids)
    assert tokens.norm(dim=-1).mean().item() == pytest.approx(target, rel=1e-3)
    embed = model.get_input_embeddings()
    raw = embed.weight.norm(dim=-1).median().item()
    if lm == "gemma3":  # Gemma scales its embeddings by sqrt(hidden): the target must include that
        hidden = model.config.text_config.hidden_size
        assert target == pytest.approx(raw * hidden**0.5, rel=1e-2)
    else:
        assert target == pytest.approx(raw, rel=1e-6)


def test_closed_form_fit_reads_the_description_not_a_shuffled_question() -> None:
    from thinchat.train.run import richest_answer

    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Is dolomite present?"}]},
        {
            "role": "assistant",
            "content": [{"type": "text", "text": "No, there is no dolomite in this slide."}],
        },
        {"role": "user", "content": [{"type": "text", "text": "Describe it."}]},
        {
            "role": "assistant",
            "content": [{"type": "text", "text": "Framework grains: quartz (about 60%), feldspar."}],
        },
        {"role": "user", "content": [{"type": "text", "text": "Is quartz present?"}]},
        {"role": "assistant", "content": "Yes. Quartz (about 60%)."},
    ]
    assert richest_answer(messages) == "Framework grains: quartz (about 60%), feldspar."
    assert richest_answer(messages[:1]) == ""
    # A labelled slide: its description is shorter than its sure-no answer; the turn types say which it is.
    labelled = [
        {"role": "user", "content": "Is there feldspar here?"},
        {"role": "assistant", "content": "No, there is no feldspar in this slide."},
        {"role": "user", "content": "Describe it."},
        {"role": "assistant", "content": "The image shows quartz."},
    ]
    assert richest_answer(labelled, ["presence", "describe"]) == "The image shows quartz."
    assert richest_answer(labelled) == "No, there is no feldspar in this slide."
