"""Tiles in training: the dataset and collator expand as the engine does; tiles have their own cache keys."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from train_helpers import tiny_overrides

from thinchat.engine import ChatEngine
from thinchat.model.tiling import TileRef, max_tiles_of
from thinchat.testing import tiny_image, tiny_llava
from thinchat.train.data import Sample
from thinchat.train.dataset import Collator, SupervisedDataset
from thinchat.train.embeds import tower_features
from thinchat.train.feature_cache import FeatureCache
from thinchat.train.feature_keys import view_key

QUESTION = "Describe this thin section."


def photo(width: int = 2000, height: int = 1500, seed: int = 0) -> Image.Image:
    return tiny_image(seed, 8).resize((width, height), Image.NEAREST)


def messages(n_images: int = 1) -> list[dict]:
    return [
        {
            "role": "user",
            "content": [*({"type": "image"} for _ in range(n_images)), {"type": "text", "text": QUESTION}],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "Mainly quartz."}]},
    ]


@pytest.fixture(scope="module")
def tiled():
    model, processor = tiny_llava("llama", "dinov2", image_size=28, max_tiles=4)
    model.model.vision_tower.requires_grad_(False)
    return model, processor


def count_image_tokens(ids, model) -> int:
    return int((torch.as_tensor(ids) == model.config.image_token_id).sum())


def test_dataset_and_collator_see_what_the_engine_sees(tiled, tmp_path):
    model, processor = tiled
    big, small = tmp_path / "big.png", tmp_path / "small.png"
    photo().save(big)
    photo(20, 20, 1).save(small)
    samples = [Sample("a", messages(), [big], "t.json#0"), Sample("b", messages(), [small], "t.json#1")]
    ds = SupervisedDataset(samples, processor, 512, max_tiles=max_tiles_of(model.config))
    seq = model.config.image_seq_length
    item = ds[0]
    assert count_image_tokens(item["input_ids"], model) == (1 + 4) * seq
    engine = ChatEngine(model, processor)
    prompt = engine.render(messages()[:1], [Image.open(big)])
    assert count_image_tokens(engine.prompts.tokenize(prompt)["input_ids"][0], model) == (1 + 4) * seq
    assert item["pixel_values"].shape[0] == 5
    assert item["image_paths"][0] == str(big) and all(isinstance(r, TileRef) for r in item["image_paths"][1:])
    assert count_image_tokens(ds[1]["input_ids"], model) == seq  # no larger than the tower: no tiles

    batch = Collator(processor.tokenizer.pad_token_id)([ds[0], ds[1]])
    assert batch["pixel_values"].shape[0] == 6 and len(batch["image_paths"]) == 6
    assert count_image_tokens(batch["input_ids"], model) == 6 * seq
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "labels", "pixel_values")}
    with torch.no_grad():
        assert torch.isfinite(model(**inputs).loss)

    off = SupervisedDataset(samples, processor, 512)  # a checkpoint without tiles: as before
    assert count_image_tokens(off[0]["input_ids"], model) == seq and off[0]["image_paths"] == [str(big)]


def test_tiles_have_their_own_cache_keys_and_features(tiled, tmp_path):
    model, processor = tiled
    big = tmp_path / "big.png"
    photo(3000, 1000).save(big)
    ds = SupervisedDataset([Sample("a", messages(), [big], "t.json#0")], processor, 512, max_tiles=3)
    item = ds[0]
    refs = item["image_paths"]
    assert len(refs) == 4  # 3x1
    cache = FeatureCache(tmp_path / "cache", model, processor, dtype="float32")
    keys = [cache.image_key(ref) for ref in refs]
    assert keys[0] == cache.image_key(big)
    assert len(set(keys)) == 4 and all(key.startswith(keys[0] + ".t") for key in keys[1:])
    turned = {view_key(key, 3) for key in keys}  # rotations: true keys stay apart from the tiles'
    assert len(turned) == 4 and not turned & set(keys)
    features = cache.features_for(refs)
    with torch.no_grad():
        direct = tower_features(model, item["pixel_values"])
    torch.testing.assert_close(features, direct)
    again = FeatureCache(tmp_path / "cache", model, processor, dtype="float32")
    again.precompute(ds.view_refs(ds.sample(0)), views=(0, 1))
    assert again.stats.hits == 4 and again.stats.misses == 4  # view 0 cached above, view 1 new
    assert torch.equal(again.features_for(refs), features)


def test_a_tiled_checkpoint_trains_with_the_feature_cache_and_rotations(tiled, tmp_path):
    from thinchat.train.config import load_train_config
    from thinchat.train.run import train

    model, processor = tiled
    base = tmp_path / "base"
    model.save_pretrained(base)
    processor.save_pretrained(base)
    entries = []
    for i in range(4):
        photo(112, 84, i).save(tmp_path / f"s{i}.png")
        entries.append(
            {
                "id": f"s{i}",
                "image": f"s{i}.png",
                "conversations": [
                    {"from": "human", "value": "<image>\n" + QUESTION},
                    {"from": "gpt", "value": f"Mainly quartz {i}."},
                ],
            }
        )
    data = tmp_path / "train.json"
    data.write_text(json.dumps(entries), encoding="utf-8")
    cache_dir = tmp_path / "cache"
    overrides = tiny_overrides("projector", base, data, tmp_path / "out", max_steps=2, save_steps=2)
    config = load_train_config(
        None, [*overrides, "feature_cache=true", f"feature_cache_dir={cache_dir}", "rotations=true"]
    )
    out = train(config)
    assert (out / "config.json").is_file()
    files = [p.name for p in cache_dir.glob("*/*/*.safetensors")]
    assert len(files) == 4 * (1 + 4) * 8  # 4 slides, each a global view and a 2x2 grid, in 8 views
    assert sum(".t" in name for name in files) == 4 * 4 * 8
