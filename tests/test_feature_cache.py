"""Feature cache: hits and misses, keys that invalidate on tower / size / weight changes, refusal when trained."""

from __future__ import annotations

import pytest
import torch

from thinchat.errors import ConfigError
from thinchat.testing import tiny_image, tiny_llava
from thinchat.train.embeds import forward_with_features, tower_features
from thinchat.train.feature_cache import FeatureCache


def _frozen(tower: str = "dinov2", image_size: int = 28, seed: int = 0):
    model, processor = tiny_llava("llama", tower, image_size=image_size, seed=seed)
    model.model.vision_tower.requires_grad_(False)
    return model, processor


def _write_images(tmp_path, n: int = 3):
    paths = []
    for i in range(n):
        path = tmp_path / f"img{i}.png"
        tiny_image(seed=i, size=40).save(path)
        paths.append(path)
    return paths


def test_cached_features_equal_tower_output_and_give_same_loss(tmp_path):
    model, processor = _frozen("clip")
    paths = _write_images(tmp_path)
    cache = FeatureCache(tmp_path / "cache", model, processor, dtype="float32")
    first = cache.features_for(paths)
    assert cache.stats.as_dict() == {"hits": 0, "misses": 3, "bytes_written": cache.disk_bytes()}
    assert first.shape == (3, model.config.image_seq_length, 32) and first.dtype == torch.float32

    from PIL import Image

    pils = [Image.open(p).convert("RGB") for p in paths]
    pixel_values = processor.image_processor(images=pils, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        direct = tower_features(model, pixel_values)
    torch.testing.assert_close(first, direct)

    # A second cache object (a second run) reads them from disk: all hits, identical values.
    again = FeatureCache(tmp_path / "cache", model, processor, dtype="float32")
    second = again.features_for([paths[2], paths[0], paths[2]])
    assert again.stats.hits == 2 and again.stats.misses == 0
    assert torch.equal(second, first[[2, 0, 2]])

    # Loss through cached features equals the pixel path.
    batch = processor(images=pils[:1], text=["<image>\nDescribe this thin section."], return_tensors="pt")
    reference = model(**batch, labels=batch["input_ids"]).loss
    loss = forward_with_features(model, batch["input_ids"], second[1:2], labels=batch["input_ids"]).loss
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-6)


def test_bf16_storage_is_close_and_half_the_size(tmp_path):
    model, processor = _frozen("dinov2")
    paths = _write_images(tmp_path, 2)
    fp32 = FeatureCache(tmp_path / "c", model, processor, dtype="float32")
    bf16 = FeatureCache(tmp_path / "c", model, processor)  # default
    a, b = fp32.features_for(paths), bf16.features_for(paths)
    assert bf16.tower_key != fp32.tower_key and b.dtype == torch.bfloat16
    torch.testing.assert_close(b.float(), a, rtol=1e-2, atol=1e-2)
    payload = 2 * model.config.image_seq_length * 32
    assert bf16.disk_bytes() < fp32.disk_bytes() < bf16.disk_bytes() + payload * 2 + 1024


def test_pil_images_and_duplicates(tmp_path):
    model, processor = _frozen("siglip")
    cache = FeatureCache(tmp_path, model, processor)
    images = [tiny_image(0), tiny_image(1), tiny_image(0)]
    out = cache.features_for(images)
    assert out.shape[0] == 3 and torch.equal(out[0], out[2]) and not torch.equal(out[0], out[1])
    assert cache.stats.misses == 2 and cache.stats.hits == 0
    cache.features_for([tiny_image(1)])
    assert cache.stats.hits == 1


def test_key_changes_with_weights_size_and_tower(tmp_path):
    model, processor = _frozen("dinov2")
    base = FeatureCache(tmp_path, model, processor)
    same = FeatureCache(tmp_path, *_frozen("dinov2"))
    assert same.tower_key == base.tower_key  # same seed, same weights: shared across runs
    other_weights = FeatureCache(tmp_path, *_frozen("dinov2", seed=1))
    with torch.no_grad():
        model.model.vision_tower.embeddings.patch_embeddings.projection.weight[0, 0, 0, 0] += 1e-3
    nudged = FeatureCache(tmp_path, model, processor)
    bigger = FeatureCache(tmp_path, *_frozen("dinov2", image_size=42))
    clip = FeatureCache(tmp_path, *_frozen("clip"))
    keys = {base.tower_key, other_weights.tower_key, nudged.tower_key, bigger.tower_key, clip.tower_key}
    assert len(keys) == 5

    # The image processor alone changes the key too (a resize with the same tower weights).
    model2, processor2 = _frozen("dinov2")
    processor2.image_processor.image_mean = [0.0, 0.0, 0.0]
    assert FeatureCache(tmp_path, model2, processor2).tower_key != base.tower_key


def test_file_content_change_is_a_miss(tmp_path):
    model, processor = _frozen()
    (path,) = _write_images(tmp_path, 1)
    cache = FeatureCache(tmp_path / "c", model, processor)
    before = cache.features_for([path])
    tiny_image(seed=99, size=40).save(path)
    after = cache.features_for([path])
    assert cache.stats.misses == 2 and not torch.equal(before, after)


def test_refuses_trainable_tower(tmp_path):
    model, processor = tiny_llava("llama", "dinov2", image_size=28)  # tower still requires grad
    cache = FeatureCache(tmp_path, model, processor)
    with pytest.raises(ConfigError, match="frozen vision tower"):
        cache.features_for([tiny_image(0)])
    with pytest.raises(ConfigError, match="feature_cache: false"):
        cache.precompute([])

    from peft import LoraConfig, get_peft_model

    model.model.vision_tower.requires_grad_(False)
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=r".*vision_tower.*\.(q_proj|v_proj)"))
    with pytest.raises(ConfigError, match="trainable"):
        FeatureCache(tmp_path, peft_model, processor).features_for([tiny_image(0)])


def test_precompute_then_all_hits_and_torn_file_recovers(tmp_path):
    model, processor = _frozen()
    paths = _write_images(tmp_path, 3)
    cache = FeatureCache(tmp_path / "c", model, processor)
    stats = cache.precompute(paths + paths[:1], batch_size=2)
    assert stats.misses == 3 and stats.hits == 0
    assert cache.precompute(paths).hits == 3
    cache.path_for(cache.image_key(paths[1])).write_bytes(b"torn")
    fresh = FeatureCache(tmp_path / "c", model, processor)
    fresh.features_for(paths)
    assert fresh.stats.hits == 2 and fresh.stats.misses == 1


def test_bad_dtype_and_missing_image(tmp_path):
    from thinchat.errors import ImageError

    model, processor = _frozen()
    with pytest.raises(ConfigError, match="dtype"):
        FeatureCache(tmp_path, model, processor, dtype="int8")
    with pytest.raises(ImageError, match=r"nope\.png"):
        FeatureCache(tmp_path, model, processor).features_for([tmp_path / "nope.png"])


def test_trainer_feature_fn_keys_by_pixels_and_ignores_autocast(tmp_path):
    from peft import LoraConfig, get_peft_model

    from thinchat.train.feature_cache import make_feature_fn

    model, processor = _frozen("clip")
    batch = processor(
        images=[tiny_image(0), tiny_image(1)],
        text=["<image>\nDescribe this thin section.", "<image>\nWhat accessory minerals are present?"],
        return_tensors="pt",
        padding=True,
    )
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=r".*language_model.*\.(q_proj|v_proj)"))
    fn = make_feature_fn(tmp_path / "cache", dtype="float32")
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as inside Trainer.training_step with bf16
        embeds = fn(peft_model, batch["input_ids"], batch["pixel_values"], ["a.png", "b.png"])
    assert fn.cache.stats.misses == 2
    with torch.no_grad():
        direct = tower_features(model, batch["pixel_values"])
    assert torch.equal(fn.cache.features_for_pixels(batch["pixel_values"]), direct)  # fp32 despite autocast
    assert fn.cache.stats.hits == 2
    reference = peft_model(**batch, labels=batch["input_ids"]).loss
    loss = peft_model(
        inputs_embeds=embeds.float(), attention_mask=batch["attention_mask"], labels=batch["input_ids"]
    ).loss
    torch.testing.assert_close(loss, reference, rtol=1e-2, atol=1e-2)  # embeds were made under bf16 autocast
    # Different preprocessing (pixels) is a different entry, never a stale hit.
    fn(peft_model, batch["input_ids"], batch["pixel_values"] * 0.5)
    assert fn.cache.stats.misses == 4
