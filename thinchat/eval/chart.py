"""Bar chart comparing checkpoints across metrics (one panel per language, plus the domain score).

A picture answers "did fine-tuning help, and where" faster than a table; Agg keeps it headless.
"""

from __future__ import annotations

from pathlib import Path

from thinchat.eval.metrics import METRIC_NAMES


def plot_comparison(report: dict, path: str | Path) -> Path:
    """Draw grouped bars (one colour per checkpoint) and save a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["checkpoints"])
    panels: list[tuple[str, list[str], dict[str, list[float]]]] = []
    for lang, table in report["metrics"].items():
        metrics = [m for m in METRIC_NAMES if m != "CIDEr-D" and all(m in table[n] for n in names)]
        panels.append(
            (f"caption metrics ({lang})", metrics, {n: [table[n][m] for m in metrics] for n in names})
        )
        if all("CIDEr-D" in table[n] for n in names):
            panels.append((f"CIDEr-D ({lang})", ["CIDEr-D"], {n: [table[n]["CIDEr-D"]] for n in names}))
    dom_labels = ["term P", "term R", "term F1", "F1 macro"]
    panels.append(
        (
            "domain score (minerals, alterations)",
            dom_labels,
            {
                n: [
                    report["domain"][n]["micro"]["precision"],
                    report["domain"][n]["micro"]["recall"],
                    report["domain"][n]["micro"]["f1"],
                    report["domain"][n]["macro"]["f1"],
                ]
                for n in names
            },
        )
    )
    widths = [max(len(p[1]), 1) for p in panels]
    fig, axes = plt.subplots(
        1,
        len(panels),
        figsize=(1.0 + 0.9 * sum(widths), 4.2),
        gridspec_kw={"width_ratios": widths},
        squeeze=False,
    )
    for ax, (title, labels, values) in zip(axes[0], panels, strict=True):
        _grouped_bars(ax, title, labels, values, names)
        ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=8)
        peak = max((v for vals in values.values() for v in vals), default=0.0)
        ax.set_ylim(0, 100 if peak <= 100 and not title.startswith("CIDEr") else max(peak * 1.1, 1.0))
    axes[0][0].set_ylabel("score (0-100; CIDEr-D x100)")
    return _save(fig, axes, names, path, top=0.9)


def _grouped_bars(
    ax, title: str, labels: list[str], values: dict[str, list[float]], names: list[str]
) -> None:
    """One bar per checkpoint for each label, side by side."""
    bar = 0.8 / max(len(names), 1)
    for k, name in enumerate(names):
        xs = [i - 0.4 + bar * (k + 0.5) for i in range(len(labels))]
        ax.bar(xs, values[name], width=bar, label=name)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.grid(axis="y", alpha=0.3)


def _save(fig, axes, names: list[str], path: str | Path, top: float) -> Path:
    """Shared legend on top, tight layout, a PNG without a timestamped software tag (reproducible bytes)."""
    import matplotlib.pyplot as plt

    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=max(len(names), 1), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, top))
    out = Path(path)
    fig.savefig(out, dpi=100, metadata={"Software": None})
    plt.close(fig)
    return out


def plot_question_following(report: dict, path: str | Path) -> Path:
    """Grouped bars of the question-following scores, one panel per language (0-1 scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    following = report["question_following"]
    names = list(following)
    keys = [
        ("yes/no acc.", "yes_no_accuracy"),
        ("answer form", "answer_form"),
        ("which-of", "which_accuracy"),
        ("yes/no, follow-up", "followup_yes_no_accuracy"),
    ]
    langs = [k for k in following[names[0]] if k != "all"]
    keys = [k for k in keys if any(following[n][lang].get(k[1]) is not None for n in names for lang in langs)]
    fig, axes = plt.subplots(1, len(langs), figsize=(1.5 + 3.2 * len(langs), 3.8), squeeze=False)
    for ax, lang in zip(axes[0], langs, strict=True):
        values = {n: [following[n][lang].get(key) or 0.0 for _, key in keys] for n in names}
        _grouped_bars(ax, f"question following ({lang})", [label for label, _ in keys], values, names)
        ax.set_ylim(0, 1)
        ax.axhline(0.5, color="grey", linewidth=0.8, linestyle=":")
    axes[0][0].set_ylabel("share right (0-1; dotted: chance for yes/no)")
    return _save(fig, axes, names, path, top=0.88)
