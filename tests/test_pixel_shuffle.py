"""Pixel shuffle before the projector (thinchat.model.projector): shapes, token counts, save/load, refusals."""

from __future__ import annotations

import pytest
import torch

from thinchat.errors import ModelSpecError
from thinchat.model.projector import CONFIG_KEY, pixel_shuffle, shuffle_factor
from thinchat.testing import tiny_image, tiny_llava


def test_each_token_holds_one_block_of_the_patch_grid():
    side, channels = 4, 3
    grid = torch.arange(side * side).repeat_interleave(channels).reshape(1, side * side, channels).float()
    out = pixel_shuffle(grid, 2)
    assert out.shape == (1, 4, 12)
    # Token 0 is the top-left 2x2 block: patches 0, 1 (first row) and 4, 5 (second row).
    assert out[0, 0, ::channels].tolist() == [0, 1, 4, 5]
    assert out[0, 3, ::channels].tolist() == [10, 11, 14, 15]
    assert pixel_shuffle(grid, 1) is grid


def test_a_factor_that_does_not_divide_the_grid_is_refused_with_the_valid_ones():
    with pytest.raises(
        ModelSpecError, match=r"does not divide the tower's 4x4 patch grid; choose one of \[1, 2, 4\]"
    ):
        tiny_llava("llama", "dinov2", image_size=56, pixel_shuffle=3)
    with pytest.raises(ModelSpecError, match="square patch grid"):
        pixel_shuffle(torch.zeros(1, 6, 2), 2)


@pytest.mark.parametrize("tower", ["dinov2", "siglip"])
def test_a_shuffled_view_costs_the_lm_a_quarter_of_the_tokens_and_round_trips(tower, tmp_path):
    from thinchat.engine import ChatEngine
    from thinchat.model.loading import load_pretrained

    model, processor = tiny_llava("llama", tower, image_size=56, pixel_shuffle=2)
    assert model.config.image_seq_length == 4 and shuffle_factor(model.config) == 2  # 4x4 patches -> 2x2
    assert (
        model.model.multi_modal_projector.linear_1.in_features == 4 * model.config.vision_config.hidden_size
    )
    image = tiny_image(1, size=56)
    features = model.get_image_features(
        pixel_values=processor.image_processor(images=[image], return_tensors="pt")["pixel_values"]
    )
    assert features.pooler_output[0].shape == (4, model.config.text_config.hidden_size)
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe."}]}],
        add_generation_prompt=True,
    )
    ids = processor(images=[image], text=text, return_tensors="pt")["input_ids"]
    assert int((ids == model.config.image_token_id).sum()) == 4  # the processor counts shuffled tokens
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded, _ = load_pretrained(tmp_path)
    assert getattr(loaded.config, CONFIG_KEY) == 2
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    engine = ChatEngine(loaded, processor)
    assert isinstance(engine.describe([image], "Describe.", max_new_tokens=3), str)


def test_the_closed_form_projector_fit_works_on_shuffled_features():
    from thinchat.train.projector_init import init_projector_ridge

    model, processor = tiny_llava("llama", "dinov2", image_size=56, pixel_shuffle=2)
    hidden = model.config.vision_config.hidden_size
    g = torch.Generator().manual_seed(0)
    features = [torch.randn(2, 16, hidden, generator=g) for _ in range(6)]  # 2 views of 4x4 patches each
    answers = ["quartz and calcite", "dolomite mosaic", "quartz grains", "calcite cement", "chlorite", "mica"]
    stats = init_projector_ridge(model, processor.tokenizer, answers, features)
    assert stats["samples"] == 6 and stats["rank"] >= 1
    projected = model.model.multi_modal_projector(features[0])
    assert projected.shape == (2, 4, model.config.text_config.hidden_size) and torch.isfinite(projected).all()


def test_stage_2_trains_a_shuffled_model_from_cached_features(tmp_path):
    import json

    from train_helpers import tiny_overrides, write_dataset

    from thinchat.model.loading import load_pretrained
    from thinchat.train.config import load_train_config
    from thinchat.train.run import train

    model, processor = tiny_llava("llama", "dinov2", image_size=56, pixel_shuffle=2)
    model.save_pretrained(tmp_path / "base")
    processor.save_pretrained(tmp_path / "base")
    data = write_dataset(tmp_path / "data", n=8, two_images=True)
    overrides = tiny_overrides(
        "lora", tmp_path / "base", data, tmp_path / "lora", feature_cache=True, learning_rate=0.01
    )
    out = train(load_train_config(None, overrides))
    last = max(out.glob("checkpoint-*"), key=lambda d: int(d.name.split("-")[1]))
    state = json.loads((last / "trainer_state.json").read_text())
    losses = [e["loss"] for e in state["log_history"] if "loss" in e]
    assert state["global_step"] == 6 and losses[-1] < losses[0]
    loaded, _ = load_pretrained(out, merge=True)
    assert shuffle_factor(loaded.config) == 2 and loaded.config.image_seq_length == 4


@pytest.mark.parametrize("factor", [0, -1])
def test_a_factor_below_one_is_refused_with_the_valid_ones(factor):
    with pytest.raises(ModelSpecError, match=rf"pixel_shuffle={factor} .*choose one of \[1, 2, 4\]"):
        tiny_llava("llama", "dinov2", image_size=56, pixel_shuffle=factor)


def test_build_refuses_a_bad_factor_or_size_before_the_lm_loads(tmp_path, capsys, monkeypatch):
    """``thinchat build`` names the valid factors (and sizes) and writes nothing; the LM is never loaded."""
    from test_build_seed import _saved_tiny_parts

    from thinchat.cli import main
    from thinchat.model import resolve

    tower, lm = _saved_tiny_parts(tmp_path)

    def no_lm(*_args, **_kwargs):
        raise AssertionError("the language model was loaded before the refusal")

    monkeypatch.setattr(resolve, "load_language_model", no_lm)
    out = tmp_path / "out"
    build = ["build", "--vision", tower, "--llm", lm, "--out", str(out)]
    assert main([*build, "--image-size", "56", "--pixel-shuffle", "3"]) == 2
    assert "choose one of [1, 2, 4]" in capsys.readouterr().err
    assert main([*build, "--image-size", "42", "--pixel-shuffle", "0"]) == 2
    assert "pixel_shuffle=0 does not divide the tower's 3x3 patch grid; choose one of [1, 3]" in (
        capsys.readouterr().err
    )
    for size in ("0", "-14", "20"):
        assert main([*build, "--image-size", size]) == 2
        assert f"--image-size {size} must be a positive multiple of the patch size 14 (14, 28, 42, ...)" in (
            capsys.readouterr().err
        )
    assert not out.exists()
