"""How much of the report's mineral content the vision tower's features hold: a linear-probe ceiling.

Why: when a finetuned model's mineral-term F1 is low, the cause is either the features (resolution,
tower layer) or the read-out (the projector and the LM). This probe fits, per lexicon term, a ridge
classifier from a slide's pooled tower features (one hidden layer, one input size, one of ``POOLS``)
to "the reference names this term", on the training split, and scores it on the test split with the
report's own term F1. A model trained on those features rarely beats the probe; if the probe is below a bar, more
training will not reach it, a larger view or another layer might.

Each image setting a model can be built with (``thinchat build --image-size/--pixel-shuffle/--max-tiles``)
has its own ceiling and its own price in LM image tokens, so the probe takes each of them as the model
would: the view size through the tower's processor; the pixel-shuffle factor by folding the patch grid
with the projector's own :func:`thinchat.model.projector.pixel_shuffle` (the features the projector
reads); tiles cut by :mod:`thinchat.model.tiling` as the engine and the training data cut them (a slide's
images all take its first image's grid), each image's global view and tiles pooled together.
"""

from __future__ import annotations

import itertools
import logging
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from thinchat.errors import DataFormatError, ModelSpecError

log = logging.getLogger(__name__)


#: How a slide's patch tokens become one probe input: the mean over its images and tokens; each image's
#: mean side by side (the LM sees the views apart); each image's mean and max (a minor phase covering a
#: few patches barely moves the mean, it does move the max). With tiles an image's tokens are those of
#: its global view and all its tiles.
Pool = Literal["mean", "views", "views+max"]
POOLS: tuple[str, ...] = typing.get_args(Pool)


def _user_message(n_images: int) -> list[dict[str, Any]]:
    """One user message showing a slide's ``n_images`` images, as a slide is asked about."""
    return [{"role": "user", "content": [{"type": "image"}] * n_images}]


def slide_grids(sizes: Sequence[tuple[int, int]], max_tiles: int, tile_size: int) -> list[tuple[int, int]]:
    """Per image of one slide (``(width, height)`` each), the tile grid the model cuts it into
    (:func:`thinchat.model.tiling.slide_grids`: the first image's grid for all; ``(1, 1)`` with tiles off)."""
    from thinchat.model import tiling

    return tiling.slide_grids(_user_message(len(sizes)), sizes, max_tiles, tile_size)


def views_per_slide(paths: Sequence[Path], max_tiles: int, tile_size: int) -> int:
    """The views the model sees of a slide: each image's global view and its tiles (headers only)."""
    from thinchat.model import tiling

    grids = slide_grids([tiling.image_size(p) for p in paths], max_tiles, tile_size)
    return sum(1 + tiling.tile_count(grid) for grid in grids)


def slide_features(
    tower: Any,
    image_processor: Any,
    images: Sequence[Sequence[Path]],
    layers: Sequence[int],
    drop_cls: bool,
    pool: str = "mean",
    factors: Sequence[int] = (1,),
    max_tiles: int = 0,
) -> dict[tuple[int, int], Any]:
    """Per ``(layer, pixel-shuffle factor)``, one row per slide: the tokens the projector would read at
    that layer (the patch grid folded by the factor) of every view of the slide (each image's global view
    and, with ``max_tiles`` > 1, its tiles), pooled per image as ``pool`` (``POOLS``)."""
    import torch
    from tqdm.auto import tqdm

    from thinchat.images import load_image
    from thinchat.model import tiling
    from thinchat.model.compose import input_size
    from thinchat.model.projector import pixel_shuffle

    check_pool(pool, images)
    tile_size = max(input_size(image_processor)) if max_tiles > 1 else 0
    rows: dict[tuple[int, int], list[Any]] = {(layer, f): [] for layer in layers for f in factors}
    with torch.no_grad():
        for paths in tqdm(images, desc="probe features", unit="slide"):
            pictures = [load_image(p) for p in paths]
            grids = slide_grids([p.size for p in pictures], max_tiles, tile_size)
            per_image = [tiling.crop_views(p, grid) for p, grid in zip(pictures, grids, strict=True)]
            views = [view for image_views in per_image for view in image_views]
            pixels = image_processor(views, return_tensors="pt")["pixel_values"]
            hidden = tower(pixel_values=pixels, output_hidden_states=True).hidden_states
            counts = [len(image_views) for image_views in per_image]
            for layer in layers:
                tokens = (hidden[layer][:, 1:] if drop_cls else hidden[layer]).float()
                for factor in factors:
                    folded = pixel_shuffle(tokens, factor)  # (views, tokens / f^2, width * f^2)
                    images_tokens = [t.flatten(0, 1) for t in folded.split(counts)]
                    rows[(layer, factor)].append(_pool(images_tokens, pool))
    return {key: torch.stack(r) for key, r in rows.items()}


def _pool(images_tokens: Sequence[Any], pool: str) -> Any:
    """One slide's row from each image's tokens ``(tokens, width)`` (``POOLS``)."""
    import torch

    means = torch.stack([t.mean(dim=0) for t in images_tokens])
    if pool == "mean":
        return torch.cat(list(images_tokens)).mean(dim=0)
    if pool == "views":
        return means.flatten()
    return torch.cat([means.flatten(), torch.stack([t.amax(dim=0) for t in images_tokens]).flatten()])


def mean_features(
    tower: Any,
    image_processor: Any,
    images: Sequence[Sequence[Path]],
    layers: Sequence[int],
    drop_cls: bool,
    pool: str = "mean",
) -> dict[int, Any]:
    """Per layer, one row per slide: its patch tokens at that layer pooled as ``pool`` (``POOLS``)."""
    rows = slide_features(tower, image_processor, images, layers, drop_cls, pool)
    return {layer: rows[(layer, 1)] for layer in layers}


def check_pool(pool: str, images: Sequence[Sequence[Path]]) -> None:
    """Refuse an unknown pool, or a per-view pool over slides with different numbers of images (their
    rows would differ in width), before any image is encoded."""
    if pool not in POOLS:
        raise ValueError(f"pool {pool!r}: expected one of {', '.join(POOLS)}")
    counts = sorted({len(paths) for paths in images})
    if pool != "mean" and len(counts) > 1:
        raise DataFormatError(
            f"pool {pool!r} needs the same number of images per slide; found slides with "
            f"{' and '.join(map(str, counts))}: use pool 'mean'"
        )


def probe_terms(
    train_x: Any, train_terms: list[set[str]], test_x: Any, test_terms: list[set[str]], alpha: float
) -> dict:
    """Micro term F1 (0-1) of per-term ridge classifiers, with per-term counts."""
    import torch

    from thinchat.train.projector_init import fit_ridge

    names = sorted(set().union(*train_terms))
    if not names:
        raise DataFormatError("the training answers name no lexicon terms: nothing to probe")

    def presence(found: list[set[str]]) -> Any:
        return torch.tensor([[t in terms for t in names] for terms in found], dtype=torch.float32)

    y_train, y_test = presence(train_terms), presence(test_terms)
    weight, x_mean, _ = fit_ridge(train_x, y_train, alpha)
    predicted = ((test_x - x_mean) @ weight.T + y_train.mean(0) > 0.5).float()
    tp, fp, fn = (
        (predicted * y_test).sum(0),
        (predicted * (1 - y_test)).sum(0),
        ((1 - predicted) * y_test).sum(0),
    )
    total = 2 * tp.sum() + fp.sum() + fn.sum()
    per_term = {n: {"tp": int(tp[i]), "fp": int(fp[i]), "fn": int(fn[i])} for i, n in enumerate(names)}
    return {
        "f1": round(float(2 * tp.sum() / total) if total > 0 else 0.0, 4),
        "yes_no_accuracy": presence_accuracy(predicted, y_test),
        "terms": per_term,
    }


def probe_classes(
    train_x: Any,
    train_labels: list[tuple[str, ...]],
    test_x: Any,
    test_labels: list[tuple[str, ...]],
    alpha: float,
) -> dict[str, Any]:
    """Class accuracy of a ridge classifier per class (one-vs-rest) on the features: the class scored
    highest (single-label), or every class scored over 0.5 matching the labels exactly (multi-label).

    The report's class accuracy reads the first class a model names; this is its ceiling on these
    features (``thinchat.eval.classes``)."""
    import torch

    from thinchat.train.projector_init import fit_ridge

    classes = sorted({c for labels in train_labels for c in labels})
    if len(classes) < 2:
        raise DataFormatError(
            f"the training slides have {len(classes)} class: a class probe needs two or more"
        )
    targets = torch.tensor([[c in labels for c in classes] for labels in train_labels], dtype=torch.float32)
    weight, x_mean, _ = fit_ridge(train_x, targets, alpha)
    scores = (test_x - x_mean) @ weight.T + targets.mean(0)
    multi = any(len(labels) > 1 for labels in train_labels + test_labels)
    if multi:
        said = [tuple(c for c, on in zip(classes, row, strict=True) if on) for row in (scores > 0.5).tolist()]
    else:
        said = [(classes[i],) for i in scores.argmax(dim=1).tolist()]
    right = [set(p) == set(t) for p, t in zip(said, test_labels, strict=True)]
    per_class = {}
    for c in sorted({c for labels in test_labels for c in labels}):
        hits = [r for r, t in zip(right, test_labels, strict=True) if c in t]
        per_class[c] = round(sum(hits) / len(hits), 4)
    return {
        "class_accuracy": round(sum(right) / len(right), 4),
        "class_per_class": per_class,
        "n_test": len(test_labels),
    }


def presence_accuracy(predicted: Any, truth: Any) -> float:
    """Balanced yes/no accuracy of the presence predictions, weighted as the question-following probes are.

    The report's yes/no score (``thinchat.eval.question_following``) averages the accuracy on terms a
    slide has and on terms it lacks, the absent ones drawn in proportion to how often the test set names
    them. The same weighting here makes the probe's figure the ceiling of that score on these features.
    """
    present = truth.sum()
    yes = float((predicted * truth).sum() / present) if present > 0 else 0.0
    weight = truth.sum(0, keepdim=True)  # term frequency in the test set
    absent = ((1 - truth) * weight).sum()
    no = float((((1 - predicted) * (1 - truth)) * weight).sum() / absent) if absent > 0 else 0.0
    return round((yes + no) / 2, 4)


def _probe_splits(train_path: str | Path, test_path: str | Path) -> dict[str, tuple[list, list, list]]:
    """Per split: each slide's image paths, the terms its references name, and its class labels (empty
    for captioned slides; labelled slides' classes are terms too)."""
    from thinchat.domain.lexicon import load_lexicon
    from thinchat.eval.classes import lexicon_for
    from thinchat.eval.data import load_eval_set
    from thinchat.eval.domain import DOMAIN_KINDS

    loaded = {}
    for name, path in (("train", train_path), ("test", test_path)):
        samples, skipped = load_eval_set(path)
        samples = [s for s in samples if s.images]
        if len(samples) < 2:
            raise DataFormatError(
                f"{path}: need at least 2 samples with images to probe, found {len(samples)}"
            )
        if skipped:
            log.warning("%s: %d samples skipped (%s)", path, len(skipped), skipped[0].reason)
        loaded[name] = samples
    # Labelled slides: their classes are terms too, and each gets a class-accuracy probe.
    lexicon = lexicon_for([s for samples in loaded.values() for s in samples]) or load_lexicon()
    splits = {}
    for name, samples in loaded.items():
        terms = [
            set().union(*(lexicon.find(r, kinds=set(DOMAIN_KINDS)) for r in s.references)) for s in samples
        ]
        splits[name] = ([s.images for s in samples], terms, [s.labels for s in samples])
    return splits


def check_settings(
    vision_config: Any,
    image_processor: Any,
    sizes: Sequence[int],
    pixel_shuffle: Sequence[int],
    spec: str = "",
) -> dict[int, tuple[Any, dict[int, int]]]:
    """Per view size, the tower's processor at that size and the LM image tokens per view for each
    pixel-shuffle factor (``thinchat.model.compose.image_seq_length``, what ``thinchat build`` records);
    every size and factor is checked before anything is encoded, and a bad one is refused naming the
    valid values."""
    import copy

    from thinchat.model.compose import image_seq_length
    from thinchat.model.resolve import set_image_size

    settings = {}
    for size in sizes:
        processor = copy.deepcopy(image_processor)
        set_image_size(vision_config, processor, size, spec)
        tokens = {}
        for factor in pixel_shuffle:
            try:
                tokens[factor] = image_seq_length(vision_config, processor, factor)
            except ModelSpecError as exc:
                raise ModelSpecError(f"at {size} px: {exc}") from exc
        settings[size] = (processor, tokens)
    return settings


def training_samples(available: int, counts: Sequence[int], seed: int = 0) -> dict[int, Any]:
    """Per requested count (0: all), the training rows a probe fits on: a seeded random sample, each
    smaller sample inside the larger ones, so a row that rises with the count shows a ceiling set by the
    data. A count over ``available`` is refused naming both."""
    import torch

    too_many = [n for n in counts if n > available]
    if too_many:
        raise DataFormatError(
            f"train_slides {too_many}: the training set has {available} slides with images; "
            f"give counts up to {available} (0: all)"
        )
    order = torch.randperm(available, generator=torch.Generator().manual_seed(seed))
    return {n: order[: n or available].sort().values for n in counts}


def _score(
    features: dict, splits: dict, key: tuple[int, int], rows: Any, alpha: float, labelled: bool
) -> dict:
    """Term (and, for labelled slides, class) scores of a probe fitted on ``rows`` of the training set."""
    train_x, test_x = features["train"][key][rows], features["test"][key]
    train_terms = [splits["train"][1][i] for i in rows.tolist()]
    scores = probe_terms(train_x, train_terms, test_x, splits["test"][1], alpha)
    if labelled:
        train_labels = [splits["train"][2][i] for i in rows.tolist()]
        scores.update(probe_classes(train_x, train_labels, test_x, splits["test"][2], alpha))
    return scores


def run_probe(
    train_path: str | Path,
    test_path: str | Path,
    vision: str = "dinov2-small",
    sizes: Sequence[int] = (42,),
    layers: Sequence[int] = (-2,),
    alpha: float = 0.1,
    pool: str = "mean",
    pixel_shuffle: Sequence[int] = (1,),
    max_tiles: Sequence[int] = (0,),
    train_slides: Sequence[int] = (0,),
) -> list[dict[str, Any]]:
    """Probe every image setting (view size x tile cap x pixel-shuffle factor) at every layer with
    features pooled as ``pool``, fitted on each sample size in ``train_slides``; one result dict per
    combination, naming its setting, the training slides it was fitted on and the LM image tokens it
    costs per test slide (``image_tokens``: views per slide x tokens per view, mean over the test
    slides)."""
    from thinchat.model.compose import check_feature_layer, input_size
    from thinchat.model.resolve import TOWER_FEATURES, load_vision_tower
    from thinchat.model.tiling import check_max_tiles

    for cap in max_tiles:  # refused before any file is read
        check_max_tiles(cap)
    splits = _probe_splits(train_path, test_path)
    samples = training_samples(len(splits["train"][0]), train_slides)
    check_pool(pool, [paths for images, _, _ in splits.values() for paths in images])
    tower, base_processor = load_vision_tower(vision)
    tower.eval()
    for layer in layers:
        check_feature_layer(tower.config, layer)
    settings = check_settings(tower.config, base_processor, sizes, pixel_shuffle, vision)
    drop_cls = TOWER_FEATURES[tower.config.model_type][1] == "default"
    labelled = all(labels for _, _, split in splits.values() for labels in split)
    results = []
    for size in sizes:
        processor, tokens_per_view = settings[size]
        for cap in max_tiles:
            tile_size = max(input_size(processor)) if cap > 1 else 0  # as the model cuts tiles
            features = {
                name: slide_features(tower, processor, images, layers, drop_cls, pool, pixel_shuffle, cap)
                for name, (images, _, _) in splits.items()
            }
            test_views = [views_per_slide(paths, cap, tile_size) for paths in splits["test"][0]]
            views = sum(test_views) / len(test_views)
            for factor, layer, rows in itertools.product(pixel_shuffle, layers, samples.values()):
                scores = _score(features, splits, (layer, factor), rows, alpha, labelled)
                setting = {
                    "vision": vision,
                    "image_size": size,
                    "layer": layer,
                    "pixel_shuffle": factor,
                    "max_tiles": cap,
                    "tokens_per_view": tokens_per_view[factor],
                    "views_per_slide": _number(views),
                    "image_tokens": _number(views * tokens_per_view[factor]),
                    "pool": pool,
                    "alpha": alpha,
                    "train_slides": len(rows),
                }
                results.append({**setting, **scores})
                log.info(
                    "probe %s %d px layer %d, pixel shuffle %d, max tiles %d (%s image tokens per slide), "
                    "%s, %d training slides: term F1 %.3f, balanced yes/no %.3f",
                    vision, size, layer, factor, cap, setting["image_tokens"], pool, len(rows),
                    scores["f1"], scores["yes_no_accuracy"],
                )  # fmt: skip
    return results


def _number(value: float) -> int | float:
    """``value`` as an int when whole (every slide the same), else to one decimal (a mean)."""
    return int(value) if float(value).is_integer() else round(value, 1)
