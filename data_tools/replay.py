"""``thinchat data replay``: the base model's own answers to general questions, as text-only training data.

Why: finetuning a small LM on a few hundred slide reports moves it towards writing reports whatever it
is asked; mixing in text-only conversations keeps its general chat ability (joint training, as
Multimodal-GPT does). Users rarely have such data, so thinchat makes it from the base model itself:
greedy answers to a pool of general and petrography questions (``replay_questions.yaml``, data), written
once before finetuning as LLaVA JSON without images and mixed in by ``text_data`` / ``text_only_ratio``.
Training on its own answers costs the model nothing it knew and penalises drifting away from them.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import yaml

from thinchat.errors import DataFormatError

log = logging.getLogger(__name__)
DEFAULT_QUESTIONS = Path(__file__).with_name("replay_questions.yaml")


def load_replay_questions(path: str | Path | None, lang: str) -> list[str]:
    """The question pool for ``lang`` ("zh", "en" or "both") from ``path`` (default: the bundled pool)."""
    source = Path(path) if path else DEFAULT_QUESTIONS
    if not source.is_file():
        raise DataFormatError(f"{source}: replay question file not found")
    try:
        data = yaml.safe_load(source.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise DataFormatError(f"{source}{line}: not valid YAML ({getattr(exc, 'problem', exc)})") from exc
    langs = ("zh", "en") if lang == "both" else (lang,)
    if not isinstance(data, dict) or not all(isinstance(data.get(code), list) for code in langs):
        raise DataFormatError(f"{source}: expected lists of questions under {' and '.join(langs)}")
    questions = [str(q) for code in langs for q in data[code] if str(q).strip()]
    if not questions:
        raise DataFormatError(f"{source}: no question for {lang}")
    return questions


def make_replay(
    model_dir: str | Path,
    out: str | Path,
    lang: str = "both",
    questions: str | Path | None = None,
    max_new_tokens: int = 96,
    batch_size: int = 8,
    holdout_every: int = 0,
) -> dict[str, Any]:
    """Answer every pool question with ``model_dir`` (greedy) and write text-only LLaVA entries to ``out``.

    Answers cut at ``max_new_tokens`` are kept (they are what the model says), empty ones are skipped
    and counted. ``holdout_every`` = k > 0 writes every k-th entry to ``<out stem>_heldout.json`` instead,
    to measure after finetuning how far the model drifted from its own answers (``thinchat eval
    --text-data``). Returns a summary with the counts and the output paths.
    """
    from thinchat.domain.language import language_of
    from thinchat.engine import ChatEngine
    from thinchat.eval.runner import generate_for_samples
    from thinchat.evalsample import EvalSample
    from thinchat.model.loading import load_pretrained

    pool = load_replay_questions(questions, lang)
    # fp32 whatever inference would choose here: the answers are training data, and every host (bf16
    # on one, fp32 on another) should write the same ones for the same model.
    model, processor = load_pretrained(model_dir, dtype="float32", merge=True)
    samples = [EvalSample(f"replay-{k:04d}", [], [], q, [], language_of(q)) for k, q in enumerate(pool)]
    engine = ChatEngine(model, processor, reuse_prefix=False)
    answers = generate_for_samples(engine, samples, batch_size, max_new_tokens, desc="replay")
    entries, empty = [], 0
    for sample in samples:
        answer = answers[sample.id].strip()
        if not answer:
            empty += 1
            continue
        entries.append(
            {
                "id": sample.id,
                "conversations": [
                    {"from": "human", "value": sample.question},
                    {"from": "gpt", "value": answer},
                ],
                "lang": sample.lang,
            }
        )
    if not entries:
        raise DataFormatError(f"{model_dir}: every replay answer was empty; nothing to write")
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    heldout = [e for k, e in enumerate(entries) if holdout_every and k % holdout_every == holdout_every - 1]
    kept = [e for e in entries if e not in heldout]
    target.write_text(json.dumps(kept, ensure_ascii=False, indent=1), encoding="utf-8")
    summary: dict[str, Any] = {
        "model": str(model_dir),
        "out": str(target),
        "questions": len(pool),
        "written": len(kept),
        "empty": empty,
    }
    if heldout:
        held = target.with_name(f"{target.stem}_heldout{target.suffix}")
        held.write_text(json.dumps(heldout, ensure_ascii=False, indent=1), encoding="utf-8")
        summary.update(heldout=str(held), heldout_written=len(heldout))
    if empty:
        log.warning("replay: %d of %d answers were empty and are left out", empty, len(samples))
    return summary
