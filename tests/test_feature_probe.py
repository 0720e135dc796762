"""The linear-probe ceiling: per-term ridge classifiers on mean tower features, scored with term F1."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from train_helpers import MINERALS, write_dataset

from thinchat.cli import main
from thinchat.errors import DataFormatError, ModelSpecError
from thinchat.eval.feature_probe import POOLS, probe_terms, run_probe
from thinchat.testing import tiny_tower


def test_probe_counts_and_f1_on_separable_features():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]] * 3)
    terms = [{"quartz"}, {"calcite"}, {"quartz", "calcite"}, set()] * 3
    result = probe_terms(x, terms, x[:4], terms[:4], alpha=1e-4)
    assert result["f1"] == 1.0
    assert result["yes_no_accuracy"] == 1.0
    assert result["terms"]["quartz"] == {"tp": 2, "fp": 0, "fn": 0}
    wrong = [{"calcite"}, {"quartz"}, {"quartz", "calcite"}, set()]  # test labels swapped on two slides
    swapped = probe_terms(x, terms, x[:4], wrong, alpha=1e-4)
    assert swapped["f1"] == pytest.approx(2 * 2 / (2 * 2 + 2 + 2))
    assert swapped["terms"]["calcite"] == {"tp": 1, "fp": 1, "fn": 1}
    # present pairs: 2 of 4 found; absent pairs: 2 of 4 rejected (both terms weigh 2)
    assert swapped["yes_no_accuracy"] == 0.5
    everything = probe_terms(x, terms, x[:4], [{"quartz", "calcite"}] * 3 + [{"quartz"}], alpha=1e-4)
    # 7 present pairs, 4 found (quartz on slides 0 and 2, calcite on 1 and 2); the one absent pair
    # (calcite on slide 3) is predicted absent
    assert everything["yes_no_accuracy"] == pytest.approx((4 / 7 + 1.0) / 2, abs=1e-4)
    with pytest.raises(DataFormatError, match="no lexicon terms"):
        probe_terms(x, [set()] * 12, x, [set()] * 12, alpha=1.0)


@pytest.fixture(scope="module")
def probe_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe")
    tower, processor = tiny_tower("dinov2", 28)
    tower.save_pretrained(root / "tower")
    processor.save_pretrained(root / "tower")
    train = write_dataset(root / "data", n=16, two_images=True)
    test = write_dataset(root / "data", n=8, two_images=True, name="test.json", seed=1)
    return root, train, test


def test_probe_names_the_mineral_of_plain_colour_slides(probe_data, tmp_path):
    root, train, test = probe_data
    results = run_probe(train, test, str(root / "tower"), sizes=[28], layers=[-2, 1], alpha=0.01)
    assert [(r["image_size"], r["layer"]) for r in results] == [(28, -2), (28, 1)]
    for r in results:
        assert set(r["terms"]) == {en for en, _ in MINERALS}
        assert sum(c["tp"] + c["fn"] for c in r["terms"].values()) == 8  # one mineral per test slide
        assert r["f1"] >= 0.75  # one colour per mineral: linearly separable even for a random tower
    out = tmp_path / "probe.json"
    args = ["probe", "--train", str(train), "--test", str(test), "--vision", str(root / "tower")]
    assert main([*args, "--sizes", "28", "--layers", "-2", "--out", str(out)]) == 0
    assert json.loads(out.read_text())[0]["f1"] == results[0]["f1"]


def test_probe_refuses_a_layer_the_tower_lacks(probe_data):
    root, train, test = probe_data
    with pytest.raises(ModelSpecError, match="does not exist"):
        run_probe(train, test, str(root / "tower"), sizes=[28], layers=[99])


def test_pools_keep_each_view_and_its_max(probe_data):
    import torch

    from thinchat.eval.data import load_eval_set
    from thinchat.eval.feature_probe import mean_features

    root, train, _ = probe_data
    tower, processor = tiny_tower("dinov2", 28)
    samples, _ = load_eval_set(train)
    images = [s.images for s in samples[:3]]
    rows = {pool: mean_features(tower, processor, images, [1], True, pool)[1] for pool in POOLS}
    width = tower.config.hidden_size
    assert [rows[p].shape for p in POOLS] == [(3, width), (3, 2 * width), (3, 4 * width)]
    views = rows["views"].view(3, 2, width)
    assert torch.allclose(rows["mean"], views.mean(dim=1), atol=1e-5)
    assert torch.equal(rows["views+max"][:, : 2 * width], rows["views"])
    assert (rows["views+max"][:, 2 * width :] >= rows["views"] - 1e-6).all()  # the max bounds the mean
    with pytest.raises(ValueError, match="expected one of"):
        mean_features(tower, processor, images, [1], True, "median")
    uneven = [images[0], images[1][:1]]
    with pytest.raises(DataFormatError, match="found slides with 1 and 2: use pool 'mean'"):
        mean_features(tower, processor, uneven, [1], True, "views")
    assert mean_features(tower, processor, uneven, [1], True, "mean")[1].shape == (2, width)
    result = run_probe(
        train, train, str(root / "tower"), sizes=[28], layers=[1], alpha=0.01, pool="views+max"
    )
    assert result[0]["pool"] == "views+max" and result[0]["f1"] >= 0.75


# ----- image settings: view size, pixel shuffle, tiles --------------------------------------------


def test_probe_options_are_run_probes_defaults():
    """``thinchat probe`` passes ``ProbeOptions`` to ``run_probe``: same names, same defaults."""
    import dataclasses
    import inspect

    from thinchat.commands.probe import ProbeOptions

    parameters = inspect.signature(run_probe).parameters
    for f in dataclasses.fields(ProbeOptions):
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        assert default == (
            list(parameters[f.name].default)
            if isinstance(parameters[f.name].default, tuple)
            else parameters[f.name].default
        ), f.name


def test_each_setting_names_itself_and_costs_the_tokens_the_built_model_does(probe_data, tmp_path):
    from thinchat.testing import tiny_llava

    root, train, test = probe_data
    out = tmp_path / "probe.json"
    args = ["probe", "--train", str(train), "--test", str(test), "--vision", str(root / "tower")]
    assert (
        main([*args, "--sizes", "28,56", "--pixel-shuffle", "1,2", "--layers", "1", "--out", str(out)]) == 0
    )
    rows = json.loads(out.read_text())
    settings = [(r["image_size"], r["layer"], r["pixel_shuffle"], r["max_tiles"]) for r in rows]
    assert settings == [(28, 1, 1, 0), (28, 1, 2, 0), (56, 1, 1, 0), (56, 1, 2, 0)]
    for r in rows:
        built, _ = tiny_llava("llama", "dinov2", image_size=r["image_size"], pixel_shuffle=r["pixel_shuffle"])
        assert r["tokens_per_view"] == built.config.image_seq_length
        assert r["views_per_slide"] == 2 and r["image_tokens"] == 2 * built.config.image_seq_length
        assert 0 <= r["f1"] <= 1 and 0 <= r["yes_no_accuracy"] <= 1
    assert [r["image_tokens"] for r in rows] == [8, 2, 32, 8]


def test_pixel_shuffled_features_are_what_the_models_projector_reads(tmp_path):
    """The probe's features at factor 2 are the input of a shuffled model's projector, pooled."""
    from thinchat.eval.feature_probe import slide_features
    from thinchat.testing import tiny_image, tiny_llava

    model, processor = tiny_llava("llama", "dinov2", image_size=56, pixel_shuffle=2)
    paths = []
    for seed in range(2):
        paths.append(tmp_path / f"slide_{seed}.png")
        tiny_image(seed, size=70).save(paths[-1])
    read: list[torch.Tensor] = []
    projector = model.model.multi_modal_projector
    hook = projector.linear_1.register_forward_pre_hook(lambda _m, inputs: read.append(inputs[0]))
    pixels = processor.image_processor(
        images=[Image.open(p).convert("RGB") for p in paths], return_tensors="pt"
    )
    with torch.no_grad():
        model.get_image_features(pixel_values=pixels["pixel_values"])
    hook.remove()
    (tokens,) = read  # (2 images, 4 tokens, 4 x width): the 4x4 patch grid folded 2x2
    width = model.config.vision_config.hidden_size
    assert tokens.shape == (2, 4, 4 * width)
    layer = model.config.vision_feature_layer
    tower = model.model.vision_tower
    rows = slide_features(tower, processor.image_processor, [paths], [layer], True, "views+max", (1, 2))
    assert rows[(layer, 1)].shape == (1, 2 * 2 * width)
    assert rows[(layer, 2)].shape == (1, 2 * 2 * 4 * width)
    expected = torch.cat([tokens.mean(dim=1).flatten(), tokens.amax(dim=1).flatten()])
    assert torch.allclose(rows[(layer, 2)][0], expected, atol=1e-5)


def _large_copy(dataset, folder, size=(112, 84)):
    """``dataset`` with every image scaled up to ``size`` (large enough for tiles at a 28 px tower input)."""
    entries = json.loads(dataset.read_text())
    for entry in entries:
        for rel in entry["image"]:
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.open(dataset.parent / rel).resize(size, Image.NEAREST).save(folder / rel)
    copy = folder / dataset.name
    copy.write_text(json.dumps(entries), encoding="utf-8")
    return copy


def test_tiles_are_the_models_tiles_pooled_per_image(probe_data, tmp_path, monkeypatch):
    from thinchat.eval import feature_probe
    from thinchat.model import tiling

    root, train, test = probe_data
    train, test = _large_copy(train, tmp_path), _large_copy(test, tmp_path)
    grid = tiling.tile_grid(112, 84, 4, tile_size=28)  # the grid the model's tiler picks: 2 x 2
    views = 2 * (1 + tiling.tile_count(grid))
    assert views == 10
    cut: list[tuple[int, int]] = []
    crop_views = tiling.crop_views
    monkeypatch.setattr(tiling, "crop_views", lambda image, g: cut.append(g) or crop_views(image, g))
    batches: list[int] = []
    slide_features = feature_probe.slide_features

    def counting(tower, *args, **kwargs):
        hook = tower.register_forward_pre_hook(
            lambda _m, _a, kw: batches.append(len(kw["pixel_values"])), with_kwargs=True
        )
        try:
            return slide_features(tower, *args, **kwargs)
        finally:
            hook.remove()

    monkeypatch.setattr(feature_probe, "slide_features", counting)
    results = run_probe(
        train, test, str(root / "tower"), sizes=[28], layers=[1], pool="views", max_tiles=[0, 4]
    )
    assert [r["max_tiles"] for r in results] == [0, 4]
    off, tiled = results
    assert (off["views_per_slide"], off["image_tokens"]) == (2, 2 * 4)
    assert (tiled["views_per_slide"], tiled["image_tokens"]) == (views, views * 4)
    n_slides = 16 + 8
    assert batches == [2] * n_slides + [views] * n_slides  # every view of a slide in one tower batch
    assert cut.count(grid) == 2 * n_slides and cut.count((1, 1)) == 2 * n_slides  # the tiler's own cuts
    assert tiled["f1"] >= 0.75  # plain-colour slides: every tile still shows the mineral's colour


def test_bad_settings_are_refused_up_front_with_the_valid_values(probe_data, monkeypatch, capsys):
    from thinchat.eval import feature_probe

    root, train, test = probe_data

    def never(*_args, **_kwargs):
        raise AssertionError("an image was encoded before the refusal")

    monkeypatch.setattr(feature_probe, "slide_features", never)
    tower = str(root / "tower")
    with pytest.raises(
        ModelSpecError, match=r"at 56 px: pixel_shuffle=3 .*4x4 patch grid; choose one of \[1, 2, 4\]"
    ):
        run_probe(train, test, tower, sizes=[56, 42], pixel_shuffle=[1, 3])
    with pytest.raises(ModelSpecError, match=r"at 28 px: pixel_shuffle=0 .*choose one of \[1, 2\]"):
        run_probe(train, test, tower, sizes=[28], pixel_shuffle=[0])
    with pytest.raises(ModelSpecError, match=r"must be a positive multiple of the patch size 14 \(14, 28"):
        run_probe(train, test, tower, sizes=[28, 30])
    with pytest.raises(ModelSpecError, match=r"max_tiles=-1 is not valid: use 0 or 1 \(off"):
        run_probe(train, test, tower, max_tiles=[4, -1])
    args = ["probe", "--train", str(train), "--test", str(test), "--vision", tower, "--sizes", "56"]
    assert main([*args, "--pixel-shuffle", "3"]) == 2
    assert "choose one of [1, 2, 4]" in capsys.readouterr().err
    assert main([*args, "--max-tiles=-1"]) == 2
    assert (
        "max_tiles=-1 is not valid: use 0 or 1 (off, one view per image) or N >= 2" in capsys.readouterr().err
    )
    assert main([*args, "--max-tiles", ""]) == 2
    assert "--max-tiles: give at least one value" in capsys.readouterr().err


def test_training_samples_are_seeded_nested_and_bounded():
    from thinchat.eval.feature_probe import training_samples

    samples = training_samples(10, [3, 6, 0])
    assert [len(samples[n]) for n in (3, 6, 0)] == [3, 6, 10]
    assert set(samples[3].tolist()) < set(samples[6].tolist()) < set(samples[0].tolist())
    assert samples[6].tolist() == training_samples(10, [6])[6].tolist()  # the same rows every run
    with pytest.raises(DataFormatError, match=r"train_slides \[11\]: the training set has 10 slides"):
        training_samples(10, [4, 11])


def test_probe_fits_on_each_sample_size_of_the_same_features(probe_data, tmp_path, monkeypatch, capsys):
    """One row per training-sample size; the features are encoded once, the probe refitted on each
    sample (fewer training slides, a different fit), and the count named in the row and the output."""
    from thinchat.eval import feature_probe

    root, train, test = probe_data
    encoded = []
    real = feature_probe.slide_features
    monkeypatch.setattr(feature_probe, "slide_features", lambda *a, **k: encoded.append(1) or real(*a, **k))
    out = tmp_path / "probe.json"
    args = ["probe", "--train", str(train), "--test", str(test), "--vision", str(root / "tower")]
    assert main([*args, "--sizes", "28", "--layers", "1", "--train-slides", "4,0", "--out", str(out)]) == 0
    assert len(encoded) == 2  # train and test encoded once for both sample sizes
    rows = json.loads(out.read_text())
    assert [r["train_slides"] for r in rows] == [4, 16]
    assert rows[0]["f1"] < rows[1]["f1"] == 1.0  # 4 slides miss minerals the 16 teach
    assert "4 training slides" in capsys.readouterr().out
    assert main([*args, "--sizes", "28", "--train-slides", "17"]) == 2
    assert "the training set has 16 slides" in capsys.readouterr().err
    assert main([*args, "--sizes", "28", "--train-slides=-1"]) == 2
