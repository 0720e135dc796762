"""Per-class scores for labelled slides: the class each model names, a confusion matrix, and two bars.

Why: on a labelled set (``thinchat data convert --labels`` / ``--image-folder``) the question a user asks
is "does it name the right class", and the caption metrics answer it badly (a few template captions).
The class a model names is read from its description with the label set's vocabulary
(``thinchat.domain.classes``): the first class it names (a finer term counts for its class). Beside the
models stand two bars: the majority class (what always answering the commonest class scores) and, where
the recipe computed it, a linear probe on the vision tower's features (what the features hold: a model
trained on them rarely beats it).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

#: The confusion-matrix column of answers that name no class.
NONE = "(none)"


def lexicon_for(samples: Sequence[Any], lexicon: Any = None) -> Any:
    """The lexicon to score ``samples`` with: ``lexicon`` (default: the bundled one) extended by the
    classes of labelled slides, so questions and term scores know a class the lexicon does not; ``lexicon``
    itself when no slide is labelled."""
    labels = {c for s in samples for c in getattr(s, "labels", ())}
    if not labels:
        return lexicon
    from thinchat.domain.classes import class_set

    return class_set(labels, lexicon).lexicon


def _single_scores(samples: Sequence[Any], named: Mapping[str, list[str]], classes: Sequence[str]) -> dict:
    """Accuracy, per-class accuracy and the confusion matrix (labelled -> first class named)."""
    confusion = {c: dict.fromkeys([*classes, NONE], 0) for c in classes}
    for s in samples:
        confusion[s.labels[0]][named[s.id][0] if named[s.id] else NONE] += 1
    per_class = {
        c: {"n": sum(row.values()), "right": row[c], "accuracy": row[c] / sum(row.values())}
        for c, row in confusion.items()
        if sum(row.values())
    }
    right = sum(v["right"] for v in per_class.values())
    return {
        "accuracy": right / len(samples),
        "right": right,
        "no_class_named": sum(row[NONE] for row in confusion.values()),
        "per_class": per_class,
        "confusion": confusion,
    }


def _multi_scores(samples: Sequence[Any], named: Mapping[str, list[str]], classes: Sequence[str]) -> dict:
    """Exact-set accuracy and per-class recall and precision (every class named counts)."""
    per_class = {}
    for c in classes:
        truth = [c in s.labels for s in samples]
        said = [c in named[s.id] for s in samples]
        hits = sum(t and p for t, p in zip(truth, said, strict=True))
        per_class[c] = {
            "n": sum(truth),
            "right": hits,
            "accuracy": hits / sum(truth) if sum(truth) else None,
            "precision": hits / sum(said) if sum(said) else None,
        }
    exact = sum(set(named[s.id]) == set(s.labels) for s in samples)
    return {
        "accuracy": exact / len(samples),
        "right": exact,
        "no_class_named": sum(not named[s.id] for s in samples),
        "per_class": per_class,
    }


def class_report(
    samples: Sequence[Any], generations: Mapping[str, Mapping[str, str]], lexicon: Any = None
) -> dict | None:
    """Per-model class scores of the labelled ``samples`` (``generations[model][sample id]`` is the
    description); None when no sample is labelled."""
    from thinchat.domain.classes import class_set

    labelled = [s for s in samples if getattr(s, "labels", ())]
    if not labelled:
        return None
    vocabulary = class_set({c for s in labelled for c in s.labels}, lexicon)
    classes = list(vocabulary.classes)
    multi = any(len(s.labels) > 1 for s in labelled)
    commonest, count = Counter("/".join(sorted(s.labels)) for s in labelled).most_common(1)[0]
    models = {}
    for name, answers in generations.items():
        named = {s.id: vocabulary.read(answers[s.id]) for s in labelled}
        score = _multi_scores if multi else _single_scores
        models[name] = score(labelled, named, classes)
    return {
        "classes": classes,
        "names": {c: vocabulary.name(c, labelled[0].lang) for c in classes},
        "multi_label": multi,
        "n": len(labelled),
        "read_from": "the first class each description names"
        if not multi
        else "every class each description names",
        "majority": {"class": commonest, "accuracy": count / len(labelled)},
        "models": models,
    }


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _probe_line(probe: dict | None, names: Sequence[str]) -> str:
    if not probe:
        return (
            "| linear probe on the tower's features (ceiling) | "
            + " | ".join("not computed" for _ in names)
            + " |"
        )
    value = _pct(probe.get("class_accuracy"))
    return "| linear probe on the tower's features (ceiling) | " + " | ".join(value for _ in names) + " |"


def class_lines(section: dict | None, names: Sequence[str]) -> list[str]:
    """The report's class section: accuracy beside the two bars, per-class accuracy, confusion matrices."""
    if not section:
        return []
    head = "| measure | " + " | ".join(names) + " |\n|---|" + "---:|" * len(names)
    models, majority = section["models"], section["majority"]
    kind = "multi-label: every class named must match" if section["multi_label"] else "single-label"
    lines = ["", f"## Classes ({section['n']} labelled slides, {kind}; read from {section['read_from']})", ""]
    lines += [
        head,
        "| class named right | " + " | ".join(_pct(models[n]["accuracy"]) for n in names) + " |",
        f"| majority class ({majority['class']}, always) | "
        + " | ".join(_pct(majority["accuracy"]) for _ in names)
        + " |",
        _probe_line(section.get("probe"), names),
        "| descriptions naming no class | "
        + " | ".join(str(models[n]["no_class_named"]) for n in names)
        + " |",
        "",
        "| class (labelled slides): named right | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for c in section["classes"]:
        n = models[names[0]]["per_class"].get(c, {}).get("n", 0)
        cells = [_pct(models[m]["per_class"].get(c, {}).get("accuracy")) for m in names]
        lines.append(f"| {c} ({n}) | " + " | ".join(cells) + " |")
    for m in names:
        lines += _confusion_lines(models[m].get("confusion"), m)
    probe = section.get("probe")
    if probe:
        lines += [
            "",
            f"Linear probe: ridge classifiers on the features of the tower the model reads ({probe.get('detail', '')}), fitted on "
            f"the training slides and scored on {probe.get('n_test', '?')} held-out slides.",
        ]
    return lines


def _confusion_lines(confusion: dict | None, name: str) -> list[str]:
    if not confusion:
        return []
    columns = list(next(iter(confusion.values())))
    lines = [
        "",
        f"Confusion matrix, `{name}` (rows: the labelled class; columns: the class its description names first)",
        "",
        "| labelled \\ named | " + " | ".join(columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    lines += [f"| {c} | " + " | ".join(str(row[k]) for k in columns) + " |" for c, row in confusion.items()]
    return lines


def plot_confusion(report: dict, path: str | Path) -> Path:
    """One confusion-matrix heat map per model (counts in the cells) as a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = {n: m["confusion"] for n, m in report["classes"]["models"].items() if m.get("confusion")}
    fig, axes = plt.subplots(
        1, max(len(models), 1), figsize=(0.6 + 3.6 * max(len(models), 1), 3.6), squeeze=False
    )
    for ax, (name, confusion) in zip(axes[0], models.items(), strict=False):
        rows, columns = list(confusion), list(next(iter(confusion.values())))
        values = [[confusion[r][c] for c in columns] for r in rows]
        ax.imshow(values, cmap="Blues", vmin=0)
        for i, row in enumerate(values):
            for j, v in enumerate(row):
                ax.text(j, i, str(v), ha="center", va="center", fontsize=8)
        ax.set_xticks(range(len(columns)), columns, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(rows)), rows, fontsize=8)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("named in the description", fontsize=8)
    axes[0][0].set_ylabel("labelled class", fontsize=8)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=100, metadata={"Software": None})
    plt.close(fig)
    return out
