"""Turn a LLaVA-format test JSON into evaluation samples: one prompt, its images, and its references.

Each entry (read by ``thinchat.conversation.parse_entry``) contributes its description exchange: its
first exchange, or, where the converter shuffled grounded questions around it (``turn_types``), the
exchange typed "describe", asked with the entry's ``<image>`` placeholders in front as a user opening the
chat would (``Entry.description``). Entries that show the same images with the same question are one
sample with several references, the multi-reference setting caption metrics are defined for. Samples
whose images are missing or unreadable are skipped and reported with the reason, never silently dropped.
"""

from __future__ import annotations

from pathlib import Path

from thinchat.conversation import parse_entry, read_llava_json
from thinchat.domain.language import language_of
from thinchat.errors import DataFormatError, ImageError
from thinchat.evalsample import IMAGE_TOKEN, EvalSample, Skipped, reference_exchange
from thinchat.images import load_image


def load_eval_set(
    data_path: str | Path, limit: int | None = None, seed: int = 0
) -> tuple[list[EvalSample], list[Skipped]]:
    """Read ``data_path`` and return (samples in file order, skipped samples with reasons).

    Raises ``DataFormatError`` for an unreadable file, a malformed entry (named by index and id) or a set
    with no entries; ``limit`` keeps a seeded sample of N samples (after grouping) spread over the classes
    or terms (``thinchat.eval.sampling``), skipped ones included.
    """
    kept, skipped, _ = load_eval_sample(data_path, limit, seed)
    return kept, skipped


def load_eval_sample(
    data_path: str | Path, limit: int | None = None, seed: int = 0
) -> tuple[list[EvalSample], list[Skipped], dict]:
    """``load_eval_set``, and how the scored sample was drawn (``thinchat.eval.sampling.draw_sample``),
    which the report states."""
    from thinchat.eval.sampling import draw_sample

    path, entries = read_llava_json(data_path, "pass --data TEST.json", split="test")
    if not entries:
        raise DataFormatError(f"{path}: empty reference set (the list has no entries)")

    base = path.parent
    groups: dict[tuple, EvalSample] = {}
    used_ids: set[str] = set()
    for index, raw in enumerate(entries):
        entry = parse_entry(raw, index, str(path))
        exchange = reference_exchange(entry)
        question, reference = exchange.question, exchange.answer
        if question.count(IMAGE_TOKEN) != len(entry.images):
            raise DataFormatError(
                f"{entry.where}: the question has {question.count(IMAGE_TOKEN)} {IMAGE_TOKEN} placeholders "
                f"but {len(entry.images)} images; they must match"
            )
        images = [base / p for p in entry.images]
        key = (tuple(str(p) for p in images), question.strip())
        if key in groups:
            groups[key].references.append(reference)
            groups[key].entry_ids.append(entry.id)
            continue
        sample_id = entry.id if entry.id not in used_ids else f"{entry.id}#{index}"
        used_ids.add(sample_id)
        groups[key] = EvalSample(
            sample_id, images, list(entry.images), question, [reference],
            entry.lang or language_of(reference), [entry.id], labels=entry.labels,
        )  # fmt: skip

    samples, drawn = draw_sample(list(groups.values()), limit, seed)
    kept: list[EvalSample] = []
    skipped: list[Skipped] = []
    for sample in samples:
        try:
            for image, name in zip(sample.images, sample.image_names, strict=True):
                load_image(image, name=name)  # relative name: the report does not depend on where data lives
        except ImageError as exc:
            skipped.append(Skipped(sample.id, str(exc)))
            continue
        kept.append(sample)
    return kept, skipped, drawn
