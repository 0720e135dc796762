"""Score generations and write the evaluation report: report.json, report.md, generations_<name>.jsonl.

Kept free of model code so the scoring and the report format are tested (and identical for identical
inputs) without generating anything. Scores are grouped by language because corpus metrics of Chinese
and English answers are not comparable with each other, nor with published tables when mixed.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from thinchat.eval.classes import class_lines, class_report
from thinchat.eval.domain import domain_scores
from thinchat.eval.following_report import fmt_value, following_lines
from thinchat.eval.meteor import MeteorScorer
from thinchat.eval.metrics import METRIC_NAMES, score_corpus
from thinchat.eval.sampling import not_asked_lines, sample_lines
from thinchat.eval.tokenize import TOKENIZATION
from thinchat.evalsample import EvalSample, Skipped

REPORT_VERSION = 1
DOMAIN_NAMES = ("term-P", "term-R", "term-F1", "term-F1-macro")


def build_report(
    samples: list[EvalSample],
    skipped: list[Skipped],
    generations: Mapping[str, Mapping[str, str]],
    checkpoints: Mapping[str, str],
    meteor: MeteorScorer | None,
    lexicon: Any = None,
    settings: Mapping[str, Any] | None = None,
) -> tuple[dict, dict[str, list[dict]]]:
    """Return (report data, per-checkpoint per-sample records) for ``generations[ckpt][sample_id]``."""
    langs = sorted({s.lang for s in samples})
    refs = {s.id: s.references for s in samples}
    metrics: dict[str, dict[str, dict[str, float]]] = {lang: {} for lang in langs}
    signatures: dict[str, dict[str, str]] = {}
    domain: dict[str, dict] = {}
    records: dict[str, list[dict]] = {}
    diversity: dict[str, dict[str, Any]] = {}
    for name in checkpoints:
        answers = generations[name]
        per_sample: dict[str, dict[str, float]] = {}
        for lang in langs:
            ids = [s.id for s in samples if s.lang == lang]
            res = score_corpus({i: answers[i] for i in ids}, {i: refs[i] for i in ids}, lang, meteor)
            metrics[lang][name] = res["scores"]
            signatures[lang] = res["signatures"]
            per_sample.update(res["per_sample"])
        diversity[name] = answer_diversity(
            [answers[s.id] for s in samples], [s.references[0] for s in samples if s.references]
        )
        dom = domain_scores(answers, refs, lexicon)
        domain[name] = {k: v for k, v in dom.items() if k != "per_sample"}
        domain[name]["n_empty_answers"] = sum(1 for s in samples if not answers[s.id].strip())
        records[name] = [
            {
                "id": s.id,
                "entry_ids": s.entry_ids,
                "lang": s.lang,
                "images": s.image_names,
                "question": s.question,
                "answer": answers[s.id],
                "references": s.references,
                "scores": per_sample[s.id],
                "domain": dom["per_sample"][s.id],
            }
            for s in samples
        ]
    report = {
        "report_version": REPORT_VERSION,
        "checkpoints": dict(checkpoints),
        "settings": dict(settings or {}),
        "tokenization": TOKENIZATION,
        "meteor_variant": meteor.variant if meteor is not None else "not computed",
        "counts": {
            "scored": len(samples),
            "skipped": len(skipped),
            "references": sum(len(s.references) for s in samples),
            "by_language": {lang: sum(1 for s in samples if s.lang == lang) for lang in langs},
        },
        "skipped": [{"id": s.id, "reason": s.reason} for s in skipped],
        "metrics": metrics,
        "signatures": signatures,
        "domain": domain,
        "answer_diversity": diversity,
    }
    classes = class_report(samples, generations, lexicon)  # labelled slides: per class, confusion matrix
    if classes:
        report["classes"] = classes
    return report, records


#: Share of identical answers from which the caption metrics stop measuring the images (one template).
SATURATED_SHARE = 0.5


def _template(text: str) -> str:
    return re.sub(r"\d+(\.\d+)?", "#", " ".join(text.lower().split()))


def answer_diversity(answers: list[str], references: list[str]) -> dict[str, Any]:
    """How many answers share one text (numbers masked), against the same figure for the references.

    Why: a model that gives every slide the same template answer can still score a fair CIDEr-D and term F1
    on a set whose references are alike; the report flags it (``saturated``) instead of letting the scores
    speak for the images.
    """

    def top(texts: list[str]) -> tuple[float, int]:
        counts = Counter(_template(t) for t in texts)
        return (max(counts.values()) / len(texts) if texts else 0.0), len(counts)

    share, distinct = top(answers)
    ref_share, ref_distinct = top(references)
    return {
        "n": len(answers),
        "distinct_answers": distinct,
        "top_answer_share": round(share, 3),
        "distinct_references": ref_distinct,
        "top_reference_share": round(ref_share, 3),
        "saturated": len(answers) >= 4 and share >= SATURATED_SHARE and share > ref_share,
    }


def render_markdown(report: dict) -> str:
    """The human-readable report: side-by-side tables per language, domain score, how it was computed."""
    names = list(report["checkpoints"])
    head = "| metric | " + " | ".join(names) + " |\n|---|" + "---:|" * len(names)
    lines = ["# thinchat evaluation report", ""]
    lines += [f"- `{n}`: `{p}`" for n, p in report["checkpoints"].items()]
    counts = report["counts"]
    langs = ", ".join(f"{k}: {v}" for k, v in counts["by_language"].items())
    lines += [
        "",
        f"Scored samples: {counts['scored']} ({langs}), references: {counts['references']}, "
        f"skipped: {counts['skipped']}.",
    ]
    lines += sample_lines(report.get("sample"))  # how the scored slides were drawn
    settings = report.get("settings") or {}
    if settings:
        lines.append("Settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()) + ".")
    for name, div in (report.get("answer_diversity") or {}).items():
        if div["saturated"]:
            lines += [
                "",
                f"**Saturated: `{name}` gives the same answer (numbers aside) to "
                f"{div['top_answer_share']:.0%} of the slides ({div['distinct_answers']} distinct answers for "
                f"{div['n']} slides; the references: {div['distinct_references']} distinct). Its caption and "
                "term scores measure that template, not what it sees on each slide.**",
            ]
    for lang, table in report["metrics"].items():
        lines += ["", f"## Caption metrics ({lang}, 0-100)", "", head]
        for metric in METRIC_NAMES:
            if any(metric in table[n] for n in names):
                lines.append(
                    f"| {metric} | " + " | ".join(fmt_value(table[n].get(metric)) for n in names) + " |"
                )
    lines += ["", "## Domain score (minerals and alterations, via the bilingual lexicon)", "", head]
    dom = report["domain"]
    rows = [
        ("term precision (micro)", lambda d: d["micro"]["precision"]),
        ("term recall (micro)", lambda d: d["micro"]["recall"]),
        ("term F1 (micro)", lambda d: d["micro"]["f1"]),
        ("term F1 (macro)", lambda d: d["macro"]["f1"]),
        ("proportion MAE (points)", lambda d: d["proportions"]["mae"]),
        ("proportions matched", lambda d: d["proportions"]["n_matched"]),
        ("proportions missing", lambda d: d["proportions"]["n_missing"]),
        ("proportions extra", lambda d: d["proportions"]["n_extra"]),
        ("empty answers", lambda d: d["n_empty_answers"]),
    ]
    for label, get in rows:
        cells = []
        for n in names:
            v = get(dom[n])
            cells.append(str(v) if isinstance(v, int) else fmt_value(v))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    first = dom[names[0]] if names else None
    if first is not None:
        lines += [
            "",
            f"Term kinds scored: {', '.join(first['kinds'])}. Macro averages over {first['macro']['n_samples']} "
            f"samples whose references name a term ({first['n_no_reference_terms']} without). Proportion MAE "
            f"over {first['proportions']['n_samples']} samples whose references state percentages.",
        ]
    lines += class_lines(report.get("classes"), names)
    lines += _reliance_lines(report.get("image_reliance"), names, head)
    lines += following_lines(report.get("question_following"), names, head) or not_asked_lines(
        report.get("question_following_note")
    )
    lines += _retention_lines(report.get("text_retention"), names, head)
    lines += ["", "## How these numbers were computed", "", f"- Tokenization: {report['tokenization']}"]
    lines.append(f"- METEOR: {report['meteor_variant']}")
    for lang, sigs in report["signatures"].items():
        for metric, sig in sigs.items():
            if metric != "METEOR":
                lines.append(f"- {metric} ({lang}): {sig}")
    lines += ["", f"## Skipped samples ({counts['skipped']})", ""]
    lines += [f"- `{s['id']}`: {s['reason']}" for s in report["skipped"]] or ["None."]
    return "\n".join(lines) + "\n"


def _reliance_lines(reliance: dict | None, names: list[str], head: str) -> list[str]:
    """The image-reliance table: answer loss with the right images vs another slide's (nats/token)."""
    if not reliance:
        return []
    rows = [
        ("answer loss, own images", "loss_own_images"),
        ("answer loss, another slide's images", "loss_other_images"),
        ("image reliance (difference)", "gap"),
    ]
    lines = ["", "## Image reliance (does the model look at the slide?)", "", head]
    for label, key in rows:
        cells = [fmt_value((reliance.get(n) or {}).get(key), 3) for n in names]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    counted = next((r for r in reliance.values() if r), {})
    lines += [
        "",
        f"Mean loss of the reference answers in nats per token over {counted.get('n_samples', 0)} samples, "
        "scored with each sample's own images and with the images rotated by one sample. A difference "
        "near 0 means the answers do not depend on the images: the model writes the typical report.",
    ]
    return lines


def _retention_lines(retention: dict | None, names: list[str], head: str) -> list[str]:
    """General chat retention: loss of the base model's own held-out text answers under each model."""
    if not retention:
        return []
    cells = [fmt_value((retention.get(n) or {}).get("loss"), 3) for n in names]
    counted = next(iter(retention.values()))
    return [
        "",
        "## General chat retention (text only)",
        "",
        head,
        "| answer loss on the base model's own answers (nats/token) | " + " | ".join(cells) + " |",
        "",
        f"{counted['n_samples']} held-out general questions ({counted['answer_tokens']} answer tokens), answered "
        "greedily by the base model before finetuning. The base scores low by construction; the rise under a "
        "finetuned model measures how far it drifted from what it could say before.",
    ]


def safe_name(name: str) -> str:
    """A checkpoint name usable in a file name."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "checkpoint"


def write_report(
    report: dict,
    records: Mapping[str, list[dict]],
    out_dir: str | Path,
    question_records: Mapping[str, list[dict]] | None = None,
) -> dict[str, Path]:
    """Write report.json, report.md, generations_<name>.jsonl, questions_<name>.jsonl and the charts."""
    from thinchat.eval.chart import plot_comparison, plot_question_following

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "md": out / "report.md", "chart": out / "chart.png"}
    paths["json"].write_text(
        json.dumps(report, ensure_ascii=False, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    paths["md"].write_text(render_markdown(report), encoding="utf-8")
    for name, rows in records.items():
        path = out / f"generations_{safe_name(name)}.jsonl"
        with path.open("w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
        paths[f"generations:{name}"] = path
    for name, rows in (question_records or {}).items():
        path = out / f"questions_{safe_name(name)}.jsonl"
        with path.open("w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
        paths[f"questions:{name}"] = path
    plot_comparison(report, paths["chart"])
    if report.get("question_following"):
        paths["question_chart"] = plot_question_following(report, out / "question_following.png")
    if report.get("classes"):
        from thinchat.eval.classes import plot_confusion

        paths["confusion_chart"] = plot_confusion(report, out / "confusion.png")
    return paths
