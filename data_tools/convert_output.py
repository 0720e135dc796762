"""The outputs of ``thinchat data convert``: the summary (counts, skip report), the converted files (LLaVA
JSON per split or a DatasetDict) and the human-readable summary the CLI prints.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from data_tools.convert_entries import Built
from data_tools.convert_rows import Reading
from thinchat.errors import DataFormatError


def summarise(fmt: str, source: Path, images_dir: Path, reading: Reading, built: Built) -> dict[str, Any]:
    """The summary ``convert`` returns and writes (docs/data.md, Summary and skip report)."""
    entries = built.entries
    rows_out = sum(len(v) for v in entries.values())
    merged = len(reading.merged)
    assert reading.rows_in == rows_out + len(reading.skips) + merged, (reading.rows_in, rows_out, merged)
    return {
        "format": fmt,
        "captions": str(source),
        "images": str(images_dir),
        "rows_in": reading.rows_in,
        "rows_out": rows_out,
        "rows_skipped": len(reading.skips),
        "rows_merged": merged,
        "splits": {name: len(v) for name, v in sorted(entries.items())},
        "images_per_split": {
            name: len({tuple(e["image"]) for e in v}) for name, v in sorted(entries.items())
        },
        "languages": dict(built.langs),
        "turns": {str(k): v for k, v in sorted(built.turns.items())},
        "grounded_questions": dict(sorted(built.qa.items())),
        "caption_chars": {
            code: {"min": min(v), "mean": round(statistics.fmean(v), 1), "max": max(v)}
            for code, v in built.lengths.items()
        },
        "control_characters_removed": {
            "rows": reading.controls["rows"],
            "characters": reading.controls["characters"],
        },
        "skipped": reading.skips,
        "outputs": {},
    }


def write_outputs(summary: dict[str, Any], built: Built, out_path: Path, format_out: str) -> None:
    """Write the entries (LLaVA JSON per split, or a DatasetDict) and record the outputs in ``summary``."""
    out_dir = out_path.parent.resolve()
    if format_out == "hf":
        from thinchat.hfdata import write_datasetdict

        named = {("train" if name == "all" else name): rows for name, rows in sorted(built.entries.items())}
        write_datasetdict(named, out_dir, out_path, built.source_captions)
        summary["outputs"] = {name: f"{out_path}/{name}" for name in named}
        return
    for name, rows in sorted(built.entries.items()):
        target = out_path if name == "all" else out_path.with_name(f"{out_path.stem}_{name}{out_path.suffix}")
        target.write_text(json.dumps(rows, ensure_ascii=False, indent=1), encoding="utf-8")
        summary["outputs"][name] = str(target)


def finish(summary: dict[str, Any], built: Built, out_path: Path, format_out: str, strict: bool) -> dict:
    """Write the outputs (unless ``strict`` and a row was skipped) and the summary; raise when nothing
    converted or ``strict`` refused."""
    summary_path = out_path.with_name(out_path.stem + ".summary.json")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    skips, rows_in = summary["skipped"], summary["rows_in"]
    if not (strict and skips) and summary["rows_out"]:
        write_outputs(summary, built, out_path, format_out)
    summary_path.write_text(json.dumps(summary, ensure_ascii=False, indent=1), encoding="utf-8")
    summary["summary_file"] = str(summary_path)
    if strict and skips:
        first = skips[0]
        raise DataFormatError(
            f"--strict: {len(skips)} of {rows_in} rows skipped, nothing written; first: "
            f"{first['file']}:{first['line'] or '-'}: {first['reason']} (full report: {summary_path})"
        )
    if not summary["rows_out"]:
        raise DataFormatError(f"no rows converted out of {rows_in}; see the skip report in {summary_path}")
    return summary


def format_summary(summary: dict[str, Any], max_skips: int = 20) -> str:
    """Human-readable summary and skip report for the CLI."""
    lines = [
        f"rows in {summary['rows_in']} = out {summary['rows_out']} + skipped {summary['rows_skipped']}"
        + (f" + merged {summary['rows_merged']}" if summary.get("rows_merged") else ""),
        f"splits: {summary['splits']}  images: {summary['images_per_split']}",
        f"languages: {summary['languages']}  turns: {summary['turns']}",
        *(
            [f"grounded questions: {summary['grounded_questions']}"]
            if summary.get("grounded_questions")
            else []
        ),
        f"caption length (chars): {summary['caption_chars']}",
    ]
    removed = summary.get("control_characters_removed") or {}
    if removed.get("characters"):
        lines.append(
            f"control characters removed: {removed['characters']} in {removed['rows']} rows "
            "(all but newline and tab)"
        )
    labels = summary.get("labels")
    if labels:
        named = ", ".join(
            f"{c} {n}" + (f" (= {labels['terms'][c]})" if labels["terms"].get(c) not in (None, c) else "")
            for c, n in labels["classes"].items()
        )
        kind = "multi-label" if labels["multi_label"] else "single-label"
        lines.append(
            f"classes ({kind}): {named}; rows merged into another row's image: {summary['rows_merged']}"
        )
    for name, path in summary["outputs"].items():
        lines.append(f"wrote {name}: {path}")
    if summary["skipped"]:
        lines.append(f"skip report ({summary['rows_skipped']} rows):")
        for item in summary["skipped"][:max_skips]:
            lines.append(
                f"  {item['file']}:{item['line'] if item['line'] is not None else '-'}: {item['reason']}"
            )
        if len(summary["skipped"]) > max_skips:
            lines.append(f"  ... {len(summary['skipped']) - max_skips} more in {summary['summary_file']}")
    lines.append(f"summary: {summary['summary_file']}")
    return "\n".join(lines)
