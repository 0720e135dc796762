"""rotations: true: each slide trained under one of its 8 rotations / flips, on the cached and the pixel path."""

from __future__ import annotations

import pytest
import torch
from train_helpers import save_tiny, tiny_overrides, write_dataset

from thinchat.errors import ConfigError
from thinchat.testing import tiny_image, tiny_llava
from thinchat.train.augment import VIEWS, batch_views, dihedral, rotate_rows, view_for
from thinchat.train.config import load_train_config
from thinchat.train.embeds import merge_image_features, tower_features
from thinchat.train.feature_cache import FeatureCache
from thinchat.train.feature_keys import view_key


def _frozen():
    model, processor = tiny_llava("llama", "dinov2", image_size=28, seed=0)
    model.requires_grad_(False)
    return model, processor


def _pixels(processor, paths):
    from thinchat.images import load_image

    return processor.image_processor([load_image(p) for p in paths], return_tensors="pt")["pixel_values"]


def test_dihedral_is_shared_with_stage_0():
    from thinchat.train import tower

    assert tower.dihedral is dihedral


def test_cache_entry_of_a_view_is_the_tower_on_the_turned_pixels_and_view_0_keeps_its_key(tmp_path):
    model, processor = _frozen()
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"img{i}.png")
        tiny_image(seed=i, size=40).save(paths[-1])
    plain = FeatureCache(tmp_path / "cache", model, processor, dtype="float32")
    before = plain.features_for(paths)  # a cache filled as before rotations existed
    assert all(plain.path_for(plain.image_key(p)).is_file() for p in paths)

    cache = FeatureCache(tmp_path / "cache", model, processor, dtype="float32")
    assert cache.tower_key == plain.tower_key
    cache.precompute(paths, views=range(VIEWS))
    assert cache.stats.hits == 3 and cache.stats.misses == 3 * (VIEWS - 1)  # view 0 was there already
    pixels = _pixels(processor, paths)
    seen = []
    for k in range(VIEWS):
        key = view_key(cache.image_key(paths[0]), k)
        assert cache.path_for(key).is_file()
        assert (key == cache.image_key(paths[0])) == (k == 0)
        got = cache.features_for(paths, [k] * 3)
        with torch.no_grad():
            direct = tower_features(model, dihedral(pixels, k))
        torch.testing.assert_close(got, direct, rtol=1e-5, atol=1e-5)
        seen.append(got[0])
    assert cache.stats.misses == 3 * (VIEWS - 1)  # every lookup above was a hit
    assert torch.equal(cache.features_for(paths, [0, 0, 0]), before)
    assert torch.equal(cache.features_for(paths), before)
    assert all(not torch.allclose(seen[0], other) for other in seen[1:])
    mixed = cache.features_for(paths, [3, 0, 6])
    assert torch.equal(mixed[0], cache.features_for(paths[:1], [3])[0])
    assert torch.equal(mixed[2], cache.features_for(paths[2:], [6])[0])


def test_a_view_missing_at_lookup_is_computed_turned(tmp_path):
    model, processor = _frozen()
    path = tmp_path / "a.png"
    tiny_image(seed=5, size=40).save(path)
    cache = FeatureCache(tmp_path / "cache", model, processor, dtype="float32")
    got = cache.features_for([path], [5])
    with torch.no_grad():
        direct = tower_features(model, dihedral(_pixels(processor, [path]), 5))
    torch.testing.assert_close(got, direct, rtol=1e-5, atol=1e-5)
    assert cache.stats.misses == 1 and cache.path_for(view_key(cache.image_key(path), 5)).is_file()


def test_views_are_one_per_slide_and_drawn_from_seed_and_step():
    paths = ["a_ppl.png", "a_xpl.png", "b_ppl.png", "b_xpl.png", "c.png"]
    views = batch_views(42, 7, paths, [2, 0, 2, 1])
    assert views[0] == views[1] and views[2] == views[3] and len(views) == 5
    assert views == batch_views(42, 7, paths, [2, 0, 2, 1])  # a resumed run draws the same
    draws = {view_for(42, step, "a_ppl.png") for step in range(64)}
    assert draws == set(range(VIEWS))
    assert [view_for(1, s, "x") for s in range(16)] != [view_for(2, s, "x") for s in range(16)]
    with pytest.raises(ValueError):
        batch_views(0, 0, paths, [1, 1])


def test_non_square_inputs_are_refused_only_when_turned():
    wide = torch.zeros(2, 3, 4, 6)
    assert rotate_rows(wide, [0, 0]) is wide
    with pytest.raises(ConfigError, match="square"):
        rotate_rows(wide, [0, 1])


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    """A batch of 4 two-view slides (PPL + XPL) and one text-only sample, collated, with the dataset."""
    from thinchat.train.dataset import Collator, SupervisedDataset
    from thinchat.train.sources import open_samples

    root = tmp_path_factory.mktemp("slides")
    data = write_dataset(root, n=4, two_images=True, text_only=1)
    model, processor = _frozen()
    dataset = SupervisedDataset(list(open_samples(data)), processor, max_length=256)
    collate = Collator(processor.tokenizer.pad_token_id)
    pixel_batch = collate([dataset[i] for i in range(len(dataset))])
    cache = FeatureCache(root / "cache", model, processor, dtype="float32")
    cache.precompute([p for s in dataset.iter_samples() for p in s.images], views=range(VIEWS))
    dataset.load_pixels = False
    cached_batch = collate([dataset[i] for i in range(len(dataset))])
    return model, cache, pixel_batch, cached_batch


def test_cached_step_merges_one_view_per_slide_and_turns_on_some_step(slides):
    from thinchat.train.trainer import embed_cached_features, turn_images

    model, cache, _, batch = slides
    paths = batch["image_paths"]
    assert len(paths) == 8 and "pixel_values" not in batch
    plain = embed_cached_features(model, batch, cache)["inputs_embeds"]
    turned_some_step = False
    for step in range(4):
        inputs = turn_images(model, batch, seed=42, step=step)
        views = inputs["image_views"]
        assert all(views[2 * i] == views[2 * i + 1] for i in range(4))  # PPL and XPL alike
        merged = embed_cached_features(model, inputs, cache)
        assert "image_views" not in merged and "image_paths" not in merged
        expected = merge_image_features(model, batch["input_ids"], cache.features_for(paths, views))
        assert torch.equal(merged["inputs_embeds"], expected)
        if any(views):
            turned_some_step = True
            assert not torch.equal(merged["inputs_embeds"], plain)
    assert turned_some_step


def test_pixel_step_turns_each_slides_pixels_alike_with_the_cached_paths_views(slides):
    from thinchat.train.trainer import turn_images

    model, _, batch, cached = slides
    assert batch["pixel_values"].shape[0] == 8
    original = batch["pixel_values"].clone()
    for step in range(4):
        views = turn_images(model, cached, seed=42, step=step)["image_views"]
        turned = turn_images(model, batch, seed=42, step=step)
        assert "image_views" not in turned
        for row, k in enumerate(views):
            assert torch.equal(turned["pixel_values"][row], dihedral(batch["pixel_values"][row], k))
        if any(views):
            assert not torch.equal(turned["pixel_values"], batch["pixel_values"])
    assert torch.equal(batch["pixel_values"], original)  # the batch itself is untouched


def test_the_trainer_turns_training_steps_by_their_step_and_never_evaluation(slides, tmp_path):
    from transformers import TrainingArguments

    from thinchat.train.trainer import ThinchatTrainer

    model, cache, _, batch = slides
    calls = []
    real = cache.features_for

    def spy(images, views=None):
        calls.append(None if views is None else list(views))
        return real(images, views)

    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    trainer = ThinchatTrainer(model=model, args=args, feature_cache=cache, rotation_seed=42)
    cache.features_for = spy
    try:
        model.train()
        for step in range(3):
            trainer.state.global_step = step
            trainer.compute_loss(model, dict(batch))
        model.eval()
        trainer.compute_loss(model, dict(batch))
    finally:
        cache.features_for = real
    paths = batch["image_paths"]
    assert calls[:3] == [batch_views(42, s, paths, [2, 2, 2, 2, 0]) for s in range(3)]
    assert calls[3] is None


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("rot")
    data = write_dataset(root / "data", n=8)
    val = write_dataset(root / "data", n=2, name="val.json", seed=1)
    return root, data, val, save_tiny(root / "base")


def test_closed_form_fit_gets_eight_rows_per_slide(tiny_run, monkeypatch):
    from thinchat.train import projector_init
    from thinchat.train.run import train

    root, data, _, base = tiny_run
    seen = {}
    real = projector_init.init_projector_ridge

    def spy(model, tokenizer, answers, features, **kwargs):
        seen.update(answers=list(answers), features=list(features), **kwargs)
        seen["stats"] = real(model, tokenizer, answers, features, **kwargs)
        return seen["stats"]

    monkeypatch.setattr(projector_init, "init_projector_ridge", spy)
    cache_dir = root / "cache"
    overrides = tiny_overrides("projector", base, data, root / "p", max_steps=0, feature_cache=True)
    config = load_train_config(
        None, [*overrides, "init=ridge", f"feature_cache_dir={cache_dir}", "rotations=true"]
    )
    train(config)
    assert len(seen["answers"]) == 8 and len(seen["features"]) == 8 * VIEWS
    assert seen["rows_per_answer"] == VIEWS and seen["stats"]["rows"] == 8 * VIEWS
    assert seen["stats"]["samples"] == 8
    first = sorted((data.parent / "images").glob("train_000_*.png"))
    cache = FeatureCache(cache_dir, *_loaded(base), dtype="bfloat16")
    for k in (0, 5):
        assert torch.equal(seen["features"][k], cache.features_for(first, [k]))


def _loaded(base):
    from thinchat.model.loading import load_pretrained

    model, processor = load_pretrained(base)
    model.requires_grad_(False)
    return model, processor


def test_a_lora_run_with_rotations_caches_training_views_only(tiny_run):
    from thinchat.train.run import train

    root, data, val, base = tiny_run
    cache_dir = root / "lora_cache"
    overrides = tiny_overrides("lora", base, data, root / "l", max_steps=2, save_steps=2, feature_cache=True)
    config = load_train_config(
        None, [*overrides, f"val_data={val}", f"feature_cache_dir={cache_dir}", "rotations=true"]
    )
    out = train(config)
    assert (out / "adapter_config.json").is_file()
    files = [p.name for p in cache_dir.glob("*/*/*.safetensors")]
    turned = [name for name in files if ".d" in name]
    assert len(turned) == 8 * (VIEWS - 1)  # the 8 training images' other views
    assert len(files) - len(turned) == 8 + 2  # view 0 of the training and the validation images


def test_a_pixel_path_run_with_rotations_trains(tiny_run):
    from thinchat.train.run import train

    root, data, _, base = tiny_run
    overrides = tiny_overrides("lora", base, data, root / "px", max_steps=2, save_steps=2)
    config = load_train_config(None, [*overrides, "rotations=true"])
    assert not config.feature_cache
    assert (train(config) / "adapter_config.json").is_file()


def test_rotations_load_from_yaml_for_both_stages_and_bad_values_are_config_errors(tmp_path):
    for stage in ("projector", "lora"):
        path = tmp_path / f"{stage}.yaml"
        path.write_text(f"stage: {stage}\nrotations: true\n", encoding="utf-8")
        assert load_train_config(path).rotations is True
        assert load_train_config(None, [f"stage={stage}"]).rotations is False
    bad = tmp_path / "bad.yaml"
    bad.write_text("stage: lora\nrotations: sideways\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="rotations"):
        load_train_config(bad)
    with pytest.raises(ConfigError, match="rotations"):
        load_train_config(None, ["stage=projector", "rotations=3"])
    with pytest.raises(ConfigError, match="clipcap"):
        load_train_config(None, ["stage=clipcap", "rotations=true"])


def test_finetune_train_overrides_turn_rotations_on_for_both_stages():
    """`thinchat finetune --captions my.tsv --images slides/ train_overrides=[rotations=true]`."""
    import argparse

    from thinchat.commands.finetune import load
    from thinchat.recipes.finetune import resolve
    from thinchat.recipes.recipe import config_path

    args = argparse.Namespace(config=None, overrides=["hardware=cpu", "train_overrides=[rotations=true]"])
    for flag in _finetune_flags():
        setattr(args, flag, None)
    args.captions, args.images = "my.tsv", "slides/"  # the command line's --captions / --images
    config, overrides = resolve(load(args))
    for yaml_path in (config.projector_config, config.lora_config):
        stage = load_train_config(config_path(yaml_path), [*overrides, *config.train_overrides])
        assert stage.rotations is True


def _finetune_flags():
    from thinchat.commands.finetune import FLAGS

    return list(FLAGS)
