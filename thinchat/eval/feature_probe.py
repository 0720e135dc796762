"""How much of the report's mineral content the vision tower's features hold: a linear-probe ceiling.

Why: when a finetuned model's mineral-term F1 is low, the cause is either the features (resolution,
tower layer) or the read-out (the projector and the LM). This probe fits, per lexicon term, a ridge
classifier from a slide's pooled tower features (one hidden layer, one input size, one of ``POOLS``)
to "the reference names this term", on the training split, and scores it on the test split with the
report's own term F1. A model trained on those features rarely beats the probe; if the probe is below a bar, more
training will not reach it, a larger view or another layer might.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from thinchat.errors import DataFormatError

log = logging.getLogger(__name__)


#: How a slide's patch tokens become one probe input: the mean over its images and tokens; each image's
#: mean side by side (the LM sees the views apart); each image's mean and max (a minor phase covering a
#: few patches barely moves the mean, it does move the max).
POOLS = ("mean", "views", "views+max")


def mean_features(
    tower: Any,
    image_processor: Any,
    images: Sequence[Sequence[Path]],
    layers: Sequence[int],
    drop_cls: bool,
    pool: str = "mean",
) -> dict[int, Any]:
    """Per layer, one row per slide: its patch tokens at that layer pooled as ``pool`` (``POOLS``)."""
    import torch
    from tqdm.auto import tqdm

    from thinchat.images import load_image

    check_pool(pool, images)
    rows: dict[int, list[Any]] = {layer: [] for layer in layers}
    with torch.no_grad():
        for paths in tqdm(images, desc="probe features", unit="slide"):
            pixels = image_processor([load_image(p) for p in paths], return_tensors="pt")["pixel_values"]
            hidden = tower(pixel_values=pixels, output_hidden_states=True).hidden_states
            for layer in layers:
                tokens = (hidden[layer][:, 1:] if drop_cls else hidden[layer]).float()
                per_view = tokens.mean(dim=1)
                if pool == "mean":
                    rows[layer].append(per_view.mean(dim=0))
                elif pool == "views":
                    rows[layer].append(per_view.flatten())
                else:
                    rows[layer].append(torch.cat([per_view.flatten(), tokens.amax(dim=1).flatten()]))
    return {layer: torch.stack(r) for layer, r in rows.items()}


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


def run_probe(
    train_path: str | Path,
    test_path: str | Path,
    vision: str = "dinov2-small",
    sizes: Sequence[int] = (42,),
    layers: Sequence[int] = (-2,),
    alpha: float = 0.1,
    pool: str = "mean",
) -> list[dict[str, Any]]:
    """Probe every (input size, layer) pair with features pooled as ``pool``; one result dict per pair."""
    from thinchat.model.compose import check_feature_layer
    from thinchat.model.resolve import TOWER_FEATURES, load_vision_tower

    splits = _probe_splits(train_path, test_path)
    check_pool(pool, [paths for images, _, _ in splits.values() for paths in images])
    results = []
    for size in sizes:
        tower, image_processor = load_vision_tower(vision, image_size=size)
        tower.eval()
        for layer in layers:
            check_feature_layer(tower.config, layer)
        drop_cls = TOWER_FEATURES[tower.config.model_type][1] == "default"
        features = {
            name: mean_features(tower, image_processor, images, layers, drop_cls, pool)
            for name, (images, _, _) in splits.items()
        }
        for layer in layers:
            scores = probe_terms(
                features["train"][layer],
                splits["train"][1],
                features["test"][layer],
                splits["test"][1],
                alpha,
            )
            if all(labels for _, _, split in splits.values() for labels in split):
                scores.update(
                    probe_classes(
                        features["train"][layer],
                        splits["train"][2],
                        features["test"][layer],
                        splits["test"][2],
                        alpha,
                    )
                )
            results.append(
                {"vision": vision, "image_size": size, "layer": layer, "pool": pool, "alpha": alpha, **scores}
            )
            log.info(
                "probe %s %d px layer %d, %s: term F1 %.3f, balanced yes/no %.3f",
                vision,
                size,
                layer,
                pool,
                scores["f1"],
                scores["yes_no_accuracy"],
            )
    return results
