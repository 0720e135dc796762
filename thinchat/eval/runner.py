"""``evaluate``: generate with each checkpoint on a test set, score, and write the comparison report.

The one entry point behind ``thinchat eval`` and the quickstart. Checkpoints are checked before any
generation starts so a typo in the second path does not cost the first checkpoint's run, and models are
loaded one at a time to keep memory to a single model.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from thinchat.errors import DataFormatError, ModelSpecError
from thinchat.eval.classes import lexicon_for
from thinchat.eval.data import load_eval_sample
from thinchat.eval.image_reliance import DEFAULT_SAMPLES as DEFAULT_RELIANCE_SAMPLES
from thinchat.eval.image_reliance import image_reliance
from thinchat.eval.meteor import MeteorScorer
from thinchat.eval.question_following import DEFAULT_MAX_NEW_TOKENS as QA_MAX_NEW_TOKENS
from thinchat.eval.question_following import (
    DEFAULT_PRESENCE,
    DEFAULT_WHICH,
    add_followup_scores,
    build_probes,
    score_probes,
)
from thinchat.eval.report import build_report, write_report
from thinchat.eval.sampling import why_no_questions
from thinchat.eval.text_retention import load_text_entries, text_retention
from thinchat.evalsample import EvalSample, Skipped
from thinchat.precision import resolve_dtype

log = logging.getLogger(__name__)

DEFAULT_MAX_NEW_TOKENS = 256


def check_checkpoint(path: str | Path) -> Path:
    """Raise ``ModelSpecError`` unless ``path`` looks like a Llava or LoRA checkpoint directory."""
    p = Path(path).expanduser()
    if not p.is_dir():
        raise ModelSpecError(f"{p}: checkpoint directory not found; pass --from_pretrained DIR")
    if not any(
        (p / name).is_file() for name in ("config.json", "adapter_config.json", "clipcap_prefix.json")
    ):
        raise ModelSpecError(
            f"{p}: neither config.json (Llava checkpoint), adapter_config.json (LoRA checkpoint) nor "
            "clipcap_prefix.json (ClipCap checkpoint) found"
        )
    return p


def sample_inputs(sample: EvalSample) -> list[Any]:
    """What stands for the sample's ``<image>`` placeholders: its decoded images, or its stored
    ClipCap embeddings (``thinchat.clipcap.evaldata``), which a ClipCap checkpoint's processor takes."""
    from thinchat.images import load_image

    stored = getattr(sample, "embeddings", None)
    return list(stored) if stored else [load_image(p) for p in sample.images]


def generate_for_samples(
    engine: Any,
    samples: list[EvalSample],
    batch_size: int = 8,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    desc: str = "generating",
    look_first: bool = False,
) -> dict[str, str]:
    """Greedy answers of ``engine`` (a ``ChatEngine``) for every sample (batched, with a progress bar):
    ``{sample_id: answer}``. ``look_first``: each question about images is answered after the model's
    own description of them, laid out as every interface lays it out (``ChatEngine.looked_batch``)."""
    from tqdm import tqdm

    from thinchat.conversation import llava_to_messages

    answers: dict[str, str] = {}
    windows = slide_windows(samples, batch_size) if look_first else [samples]
    with tqdm(total=len(samples), desc=desc, unit="sample") as bar:
        for window in windows:
            if look_first:
                describe_slides(engine, window)
            for start in range(0, len(window), batch_size):
                batch = window[start : start + batch_size]
                images = [sample_inputs(s) for s in batch]
                messages = [llava_to_messages(s.conversation()) for s in batch]
                if look_first:
                    messages = engine.looked_batch(messages, images)
                answers.update(_answers_that_fit(engine, batch, messages, images, max_new_tokens))
                bar.update(len(batch))
    return answers


def _look_key(sample: EvalSample) -> tuple[str, ...]:
    """What a look-first description depends on: the slide's images and the language asked in."""
    from thinchat.chat.look import look_question

    return (*map(str, sample.images), look_question(sample.question))


def slide_windows(samples: list[EvalSample], n_slides: int) -> list[list[EvalSample]]:
    """``samples`` cut, in order, into runs that each need at most ``n_slides`` look-first descriptions.

    Why: the questions come slide by slide (five or six each), so a batch of questions holds only a few
    new slides; describing a window's slides in one batch before its questions took the quickstart's
    looking-first pass from 175 s to 109 s (2-core EPYC, 2026-12-07), and a window, unlike the whole
    set, stays within the engine's kept descriptions (``LOOK_CACHE_SIZE``) however many slides there are.
    """
    windows: list[list[EvalSample]] = []
    seen: set[tuple[str, ...]] = set()
    for sample in samples:
        key = _look_key(sample)
        if key not in seen and len(seen) == n_slides:
            seen = set()
        if not seen:
            windows.append([])
        seen.add(key)
        windows[-1].append(sample)
    return windows


def describe_slides(engine: Any, samples: list[EvalSample]) -> None:
    """Have ``engine`` keep the look-first description of every slide in ``samples``, in one batch."""
    from thinchat.conversation import llava_to_messages

    firsts: dict[tuple[str, ...], EvalSample] = {}
    for sample in samples:
        firsts.setdefault(_look_key(sample), sample)
    slides = list(firsts.values())
    engine.looked_batch(
        [llava_to_messages(s.conversation()) for s in slides], [sample_inputs(s) for s in slides]
    )


def _answers_that_fit(
    engine: Any, batch: list[EvalSample], messages: list[Any], images: list[Any], max_new_tokens: int
) -> dict[str, str]:
    """The batch's answers; a prompt over the LM's positions is answered empty (scored wrong) and
    logged, instead of failing the whole report.

    Why: looking first puts the model's own description into the prompt, and an untrained model's
    description can tokenise far longer than it was generated (broken UTF-8 decodes to U+FFFD, several
    tokens each), so a base model's looking-first prompt can overflow where its direct one fits.
    """
    budget = engine.prompt_budget(engine.resolve(max_new_tokens=max_new_tokens))
    fits = [engine.prompts.count_tokens(m, imgs) <= budget for m, imgs in zip(messages, images, strict=True)]
    kept = [i for i, ok in enumerate(fits) if ok]
    outs = (
        engine.generate_batch([messages[i] for i in kept], [images[i] for i in kept], max_new_tokens)
        if kept
        else []
    )
    answers = {batch[i].id: "" for i, ok in enumerate(fits) if not ok}
    answers.update({batch[i].id: out for i, out in zip(kept, outs, strict=True)})
    if len(kept) < len(batch):
        log.warning(
            "%d of %d prompts do not fit the LM's %d prompt tokens (%s): answered empty, scored wrong",
            len(batch) - len(kept), len(batch), budget, ", ".join(batch[i].id for i, ok in enumerate(fits) if not ok),
        )  # fmt: skip
    return answers


def looked_descriptions(engine: Any, probes: list[Any]) -> dict[str, str]:
    """Per slide, the description the engine looked at before the slide's questions (kept by the
    engine, so nothing is generated again)."""
    out: dict[str, str] = {}
    for probe in probes:
        if probe.sample.id not in out:
            out[probe.sample.id] = engine.description(sample_inputs(probe.sample), probe.question)
    return out


def ask_probes(
    engine: Any,
    probes: list[Any],
    batch_size: int,
    max_new_tokens: int,
    name: str,
    look_first: bool,
    lexicon: Any,
) -> dict[str, Any]:
    """Ask the grounded questions directly and, with ``look_first``, again as every interface asks them
    (after the model's own description); the scores of ``question_following``."""
    asked = [p.as_sample() for p in probes]
    limit = min(max_new_tokens, QA_MAX_NEW_TOKENS)
    answers = generate_for_samples(engine, asked, batch_size, limit, desc=f"questions {name}")
    scores = score_probes(probes, answers, lexicon)
    if look_first:
        again = generate_for_samples(
            engine, asked, batch_size, limit, desc=f"looking first {name}", look_first=True
        )
        add_followup_scores(scores, probes, again, lexicon, looked_descriptions(engine, probes))
    return scores


def _check_request(
    checkpoints: Mapping[str, str], data_path: str | Path, batch_size: int, max_new_tokens: int
) -> bool:
    """Refuse bad settings and checkpoints before any model loads (a typo costs no generation run).

    Returns whether ``data_path`` is an imported ThinGPT test set (stored ClipCap embeddings).
    """
    if not checkpoints:
        raise ModelSpecError("no checkpoint to evaluate; pass --from_pretrained DIR (repeatable)")
    if batch_size < 1 or max_new_tokens < 1:
        raise DataFormatError("--batch-size and --max-new-tokens must be at least 1")
    for path in checkpoints.values():
        check_checkpoint(path)
    from thinchat.clipcap.evaldata import is_clipcap_eval_file
    from thinchat.clipcap.prefix import is_clipcap_dir

    embedded = is_clipcap_eval_file(data_path)
    if embedded:  # an imported ThinGPT test set: stored embeddings, which only a ClipCap checkpoint takes
        plain = [p for p in checkpoints.values() if not is_clipcap_dir(Path(p).expanduser())]
        if plain:
            raise ModelSpecError(
                f"{data_path} holds ClipCap embeddings (image_embedding), which only a checkpoint of the "
                f"clipcap stage reads; {plain[0]} is not one"
            )
    return embedded


def _load_test_set(
    data_path: str | Path, limit: int | None, embedded: bool, lexicon: Any
) -> tuple[list[Any], list[Skipped], dict | None, Any]:
    """The slides to score, the skipped ones, how the scored ones were drawn, and the lexicon.

    Labelled slides add their classes to the lexicon, so questions and term scores know them.
    """
    from thinchat.clipcap.evaldata import load_clipcap_eval_set

    drawn = None  # how the scored slides were drawn (a ClipCap import: its first ``limit``)
    if embedded:
        samples, skipped = load_clipcap_eval_set(data_path, limit=limit)
    else:
        samples, skipped, drawn = load_eval_sample(data_path, limit=limit)
    lexicon = lexicon_for(samples, lexicon)  # labelled slides: their classes are terms too
    if not samples:
        reasons = "; ".join(f"{s.id}: {s.reason}" for s in skipped[:3])
        raise DataFormatError(f"{data_path}: no sample left to score, all {len(skipped)} skipped ({reasons})")
    for s in skipped:
        log.warning("skipped sample %s: %s", s.id, s.reason)
    return samples, skipped, drawn, lexicon


@dataclass
class _CheckpointOutputs:
    """What each checkpoint produced, by checkpoint name; the report is built from these."""

    generations: dict[str, dict[str, str]] = field(default_factory=dict)
    reliance: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    following: dict[str, dict[str, Any]] = field(default_factory=dict)
    retention: dict[str, dict[str, Any]] = field(default_factory=dict)


def _run_checkpoints(
    checkpoints: Mapping[str, str],
    samples: list[Any],
    probes: list[Any],
    text_conversations: list[Any],
    *,
    batch_size: int,
    max_new_tokens: int,
    device: str | None,
    dtype: Any,
    reliance_samples: int,
    look_first: bool | Collection[str],
    lexicon: Any,
) -> _CheckpointOutputs:
    """Generate, ask the probes and measure with each checkpoint, loading one model at a time (memory)."""
    from thinchat.clipcap.prefix import is_clipcap_dir
    from thinchat.engine import ChatEngine
    from thinchat.model.loading import load_pretrained

    outputs = _CheckpointOutputs()
    for name, path in checkpoints.items():
        # A LoRA checkpoint is merged, as the chat engine does: same outputs, faster decoding
        # (docs/experiments.md, Evaluation speed).
        model, processor = load_pretrained(path, device=device, dtype=dtype, merge=True)
        clipcap = is_clipcap_dir(Path(path).expanduser())  # a ClipCap prefix model takes one turn
        engine = ChatEngine(model, processor, reuse_prefix=False)
        outputs.generations[name] = generate_for_samples(
            engine, samples, batch_size, max_new_tokens, desc=f"eval {name}"
        )
        if probes:
            looks = look_first if isinstance(look_first, bool) else name in look_first
            outputs.following[name] = ask_probes(
                engine, probes, batch_size, max_new_tokens, name, looks and not clipcap, lexicon
            )
        if reliance_samples > 0 and clipcap:
            log.info("%s: image reliance is computed for Llava checkpoints only, not ClipCap", name)
        elif reliance_samples > 0:
            outputs.reliance[name] = image_reliance(model, processor, samples, limit=reliance_samples)
        if text_conversations:
            outputs.retention[name] = text_retention(model, processor, text_conversations)
        del model, processor, engine
    return outputs


def _add_optional_sections(
    report: dict,
    outputs: _CheckpointOutputs,
    drawn: dict | None,
    samples: list[Any],
    probes: list[Any],
    question_probes: int,
    lexicon: Any,
) -> dict[str, list[dict]]:
    """Add the report sections only some runs have; returns the question records, by checkpoint."""
    if drawn:
        report["sample"] = drawn
    if not probes:
        report["question_following_note"] = why_no_questions(samples, question_probes, lexicon)
    if any(r is not None for r in outputs.reliance.values()):
        report["image_reliance"] = outputs.reliance
    if outputs.retention:
        report["text_retention"] = outputs.retention
    qa_records: dict[str, list[dict]] = {}
    if outputs.following:
        report["question_following"] = {
            name: {k: v for k, v in scores.items() if k != "records"}
            for name, scores in outputs.following.items()
        }
        qa_records = {name: scores["records"] for name, scores in outputs.following.items()}
    return qa_records


def evaluate(
    checkpoints: Mapping[str, str],
    data_path: str | Path,
    out_dir: str | Path,
    batch_size: int = 8,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    limit: int | None = None,
    meteor: str = "auto",
    device: str | None = None,
    dtype: Any = None,
    lexicon: Any = None,
    reliance_samples: int = DEFAULT_RELIANCE_SAMPLES,
    question_probes: int = DEFAULT_PRESENCE,
    text_data: str | Path | None = None,
    look_first: bool | Collection[str] = True,
) -> dict:
    """Evaluate ``{name: checkpoint_dir}`` on the LLaVA-format ``data_path``; write the report to ``out_dir``.

    ``reliance_samples`` > 0 adds each model's image reliance (``thinchat.eval.image_reliance``) on that
    many samples: answer loss with the right images vs another slide's. ``question_probes`` > 0 asks that
    many grounded yes/no questions per slide (half "yes") plus one which-of question and scores the
    answers, asked directly and, with ``look_first``, as every interface answers them: after the model's
    own description (``thinchat.eval.question_following``, ``thinchat.chat.look``); a collection of
    checkpoint names looks first with those only (the recipes leave out the base model, whose
    descriptions run to ``max_new_tokens``: 330 s of a 1762 s quickstart on a 2-core EPYC).
    ``text_data`` (text-only LLaVA JSON, e.g. the base model's held-out replay answers) adds each
    model's answer loss on it: general chat retention. ``dtype`` (None:
    ``thinchat.precision.inference_dtype``, bf16 on a GPU and on a CPU whose bf16 matmuls measure faster)
    is the weights dtype every checkpoint is scored in; the report's settings record it. Returns the
    report data (what ``report.json`` holds). Raises ``ThinchatError`` subclasses for a bad test set
    (empty, malformed, nothing left after skipping) or a checkpoint that fails to load.
    """
    embedded = _check_request(checkpoints, data_path, batch_size, max_new_tokens)
    weights_dtype = resolve_dtype(dtype, device)
    samples, skipped, drawn, lexicon = _load_test_set(data_path, limit, embedded, lexicon)
    probes = (
        build_probes(samples, lexicon, presence=question_probes, which=DEFAULT_WHICH)
        if question_probes > 0
        else []
    )
    text_conversations = load_text_entries(text_data) if text_data else []
    outputs = _run_checkpoints(
        checkpoints,
        samples,
        probes,
        text_conversations,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        device=device,
        dtype=weights_dtype,
        reliance_samples=reliance_samples,
        look_first=look_first,
        lexicon=lexicon,
    )
    dtype_name = str(weights_dtype).removeprefix("torch.")
    settings = {
        "decoding": "greedy",
        "max_new_tokens": max_new_tokens,
        "data": str(data_path),
        "dtype": dtype_name,
    }
    scorer = MeteorScorer(meteor)
    try:
        report, records = build_report(
            samples,
            skipped,
            outputs.generations,
            {n: str(p) for n, p in checkpoints.items()},
            scorer,
            lexicon=lexicon,
            settings=settings,
        )
    finally:
        scorer.close()
    qa_records = _add_optional_sections(report, outputs, drawn, samples, probes, question_probes, lexicon)
    paths = write_report(report, records, out_dir, qa_records)
    log.info("wrote %s and %s", paths["md"], paths["json"])
    return report
