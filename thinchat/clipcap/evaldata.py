"""Evaluation samples from an import directory: the stored embedding is each sample's "image".

Why its own reader: ``thinchat.eval.data`` resolves ``image`` paths and loads pixels; an imported
ThinGPT test set has no images, only ``image_embedding`` keys into ``clip_embeddings.safetensors``
beside the JSON. Entries are read and their reference exchange taken as in ``thinchat.eval.data``
(``thinchat.conversation.parse_entry``), and those with the same embedding and question are one sample
with several references; an entry whose embedding is missing is skipped with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from thinchat.clipcap.data import EMBEDDINGS, StoredEmbedding, load_embeddings
from thinchat.conversation import parse_entry, read_llava_json
from thinchat.domain.language import language_of
from thinchat.errors import DataFormatError
from thinchat.evalsample import IMAGE_TOKEN, EvalSample, Skipped, reference_exchange


@dataclass
class EmbeddingEvalSample(EvalSample):
    """An :class:`EvalSample` whose ``<image>`` is a stored pooled embedding, not an image file."""

    embeddings: list[StoredEmbedding] = field(default_factory=list)


def is_clipcap_eval_file(path: str | Path) -> bool:
    """True when ``path`` is a conversations JSON whose entries name ``image_embedding`` keys."""
    path = Path(path)
    if not path.is_file() or not (path.parent / EMBEDDINGS).is_file():
        return False
    try:
        _, entries = read_llava_json(path, "")
    except DataFormatError:
        return False
    return any(isinstance(e, dict) and "image_embedding" in e for e in entries)


def load_clipcap_eval_set(
    data_path: str | Path, limit: int | None = None
) -> tuple[list[EmbeddingEvalSample], list[Skipped]]:
    """Samples (file order, first ``limit``) and skipped ones, from an import directory's JSON."""
    path = Path(data_path)
    embeddings = load_embeddings(path.parent / EMBEDDINGS)
    path, entries = read_llava_json(path, "pass the conversations.json of an import directory")
    if not entries:
        raise DataFormatError(f"{path}: expected a non-empty JSON list of entries")
    groups: dict[tuple[str, str], EmbeddingEvalSample] = {}
    missing: dict[str, str] = {}
    for index, raw in enumerate(entries):
        entry = parse_entry(raw, index, str(path))
        exchange = reference_exchange(entry)
        question, reference = exchange.question, exchange.answer
        key = str(entry.image_embedding)
        if question.count(IMAGE_TOKEN) != 1:
            raise DataFormatError(
                f"{entry.where}: the question needs exactly one {IMAGE_TOKEN} (the embedding)"
            )
        group = (key, question.strip())
        if group in groups:
            groups[group].references.append(reference)
            groups[group].entry_ids.append(entry.id)
            continue
        lang = entry.lang or language_of(reference)
        stored = [StoredEmbedding(key, embeddings[key])] if key in embeddings else []
        if not stored:
            missing[entry.id] = f"no embedding {key!r} in {EMBEDDINGS}"
        groups[group] = EmbeddingEvalSample(
            entry.id, [], [key], question, [reference], lang, [entry.id], embeddings=stored
        )
    samples = list(groups.values())[:limit] if limit is not None else list(groups.values())
    kept = [s for s in samples if s.embeddings]
    skipped = [Skipped(s.id, missing[s.id]) for s in samples if not s.embeddings]
    return kept, skipped
