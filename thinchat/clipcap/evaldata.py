"""Evaluation samples from an import directory: the stored embedding is each sample's "image".

Why its own reader: ``thinchat.eval.data`` resolves ``image`` paths and loads pixels; an imported
ThinGPT test set has no images, only ``image_embedding`` keys into ``clip_embeddings.safetensors``
beside the JSON. Entries with the same embedding and question are one sample with several references,
as in ``thinchat.eval.data``; an entry whose embedding is missing is skipped with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from thinchat.clipcap.data import EMBEDDINGS, StoredEmbedding, load_embeddings
from thinchat.conversation import read_llava_json
from thinchat.domain.language import language_of
from thinchat.errors import DataFormatError
from thinchat.eval.data import IMAGE_TOKEN, EvalSample, Skipped


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


def _first_exchange(entry: dict, where: str) -> tuple[str, str]:
    convs = entry.get("conversations")
    turns = [t for t in convs if isinstance(t, dict)] if isinstance(convs, list) else []
    human = next((t.get("value") for t in turns if t.get("from") == "human"), None)
    gpt = next((t.get("value") for t in turns if t.get("from") == "gpt"), None)
    if not isinstance(human, str) or not isinstance(gpt, str) or not gpt.strip():
        raise DataFormatError(f"{where}: needs a human turn and a non-empty gpt turn (the reference)")
    return human, gpt


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
    for index, entry in enumerate(entries):
        where = f"{path}: entry {index}"
        if not isinstance(entry, dict):
            raise DataFormatError(f"{where}: expected an object with 'conversations'")
        question, reference = _first_exchange(entry, where)
        key = str(entry.get("image_embedding"))
        if question.count(IMAGE_TOKEN) != 1:
            raise DataFormatError(f"{where}: the question needs exactly one {IMAGE_TOKEN} (the embedding)")
        entry_id = str(entry.get("id", index))
        group = (key, question.strip())
        if group in groups:
            groups[group].references.append(reference)
            groups[group].entry_ids.append(entry_id)
            continue
        lang = entry.get("lang") if entry.get("lang") in ("zh", "en") else language_of(reference)
        stored = [StoredEmbedding(key, embeddings[key])] if key in embeddings else []
        if not stored:
            missing[entry_id] = f"no embedding {key!r} in {EMBEDDINGS}"
        groups[group] = EmbeddingEvalSample(
            entry_id, [], [key], question, [reference], lang, [entry_id], embeddings=stored
        )
    samples = list(groups.values())[:limit] if limit is not None else list(groups.values())
    kept = [s for s in samples if s.embeddings]
    skipped = [Skipped(s.id, missing[s.id]) for s in samples if not s.embeddings]
    return kept, skipped
