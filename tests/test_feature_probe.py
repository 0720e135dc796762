"""The linear-probe ceiling: per-term ridge classifiers on mean tower features, scored with term F1."""

from __future__ import annotations

import json

import pytest
import torch
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
