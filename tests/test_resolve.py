"""Spec resolution: presets, directories, .gguf files, hub ids, and the errors for each."""

from __future__ import annotations

import numpy as np
import pytest

from thinchat.errors import ModelSpecError
from thinchat.model.resolve import classify, load_language_model, load_vision_tower


def test_presets_classify_by_kind():
    assert classify("smollm2-135m-instruct", "lm").kind == "preset"
    assert classify("dinov2-small", "vision").kind == "preset"
    with pytest.raises(ModelSpecError, match="preset 'dinov2-small' is a vision model.*lm presets: smollm2"):
        classify("dinov2-small", "lm")


def test_unknown_name_lists_presets_and_suggests_the_closest():
    with pytest.raises(ModelSpecError) as info:
        classify("smollm2-135m", "lm")
    message = str(info.value)
    assert "unknown lm model 'smollm2-135m'" in message
    assert "Did you mean 'smollm2-135m-instruct'?" in message
    assert "gemma3-270m" in message


def test_hub_id_offline_names_what_was_tried_and_the_presets(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert classify("Qwen/Qwen2.5-0.5B-Instruct", "lm").kind == "hub"
    with pytest.raises(ModelSpecError) as info:
        load_language_model("thinchat-tests/does-not-exist")
    assert "thinchat-tests/does-not-exist" in str(info.value)
    assert "offline lm preset (smollm2-135m-instruct, gemma3-270m)" in str(info.value)
    with pytest.raises(ModelSpecError, match="offline vision preset \\(dinov2-small\\)"):
        load_vision_tower("openai/clip-vit-large-patch14-336")


def test_paths(tmp_path):
    with pytest.raises(ModelSpecError, match="no config.json"):
        classify(str(tmp_path), "lm")
    with pytest.raises(ModelSpecError, match="GGUF file not found"):
        classify(str(tmp_path / "missing.gguf"), "lm")
    with pytest.raises(ModelSpecError, match="no such file or directory"):
        classify("./nowhere/model", "lm")


def test_local_directory_round_trip(tmp_path):
    from thinchat.testing import tiny_lm, tiny_tokenizer, tiny_tower

    tokenizer = tiny_tokenizer("qwen2")
    lm = tiny_lm("qwen2", len(tokenizer))
    lm.save_pretrained(tmp_path / "lm")
    tokenizer.save_pretrained(tmp_path / "lm")
    model, tok = load_language_model(str(tmp_path / "lm"))
    assert model.config.model_type == "qwen2" and len(tok) == len(tokenizer)

    tower, processor = tiny_tower("clip")
    tower.save_pretrained(tmp_path / "tower")
    processor.save_pretrained(tmp_path / "tower")
    vision, _ = load_vision_tower(str(tmp_path / "tower"))
    assert vision.config.model_type == "clip_vision_model"
    with pytest.raises(ModelSpecError, match="native 28 px only"):
        load_vision_tower(str(tmp_path / "tower"), image_size=56)


def test_unsupported_gguf_architecture_is_refused_before_loading(tmp_path):
    import gguf

    path = tmp_path / "weird.gguf"
    writer = gguf.GGUFWriter(str(path), arch="rwkv-imaginary")
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(
        ModelSpecError, match="GGUF architecture 'rwkv-imaginary' cannot be loaded by transformers"
    ):
        load_language_model(str(path))
