"""The directory ``thinchat data import-clipcap`` writes, read and checked, and its tokenisation.

Layout: ``conversations.json`` (LLaVA entries whose one ``<image>`` stands for the embedding named by
``image_embedding``), ``clip_embeddings.safetensors`` (one tensor per image id) and ``clipcap_import.json``
(which tower made the embeddings). Everything is checked when read (every entry's turns, by
``thinchat.conversation.parse_entry``; every entry names a stored embedding, one ``<image>`` per entry,
one embedding width) so a bad directory fails before a model loads.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from thinchat.conversation import Entry, parse_entry, read_llava_json
from thinchat.errors import DataFormatError

CONVERSATIONS = "conversations.json"
EMBEDDINGS = "clip_embeddings.safetensors"
IMPORT_META = "clipcap_import.json"
IGNORE_INDEX = -100


@dataclass(frozen=True)
class StoredEmbedding:
    """A pooled image embedding read from an import directory: what a ClipCap model takes for an image."""

    key: str
    tensor: torch.Tensor

    @property
    def width(self) -> int:
        return int(self.tensor.numel())


@dataclass
class ClipCapData:
    """One import directory: entries (parsed and checked), their embeddings, the embedding width and the
    tower that made them."""

    entries: list[Entry]
    embeddings: dict[str, torch.Tensor]
    width: int
    encoder: str | None
    directory: Path


def load_embeddings(path: str | Path) -> dict[str, torch.Tensor]:
    """``{image id: tensor}`` from ``clip_embeddings.safetensors``, checked for one width."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"{path}: missing; run `thinchat data import-clipcap FEATURES.pkl --out DIR`")
    try:
        embeddings = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise DataFormatError(f"{path}: not a readable safetensors file ({exc})") from exc
    widths: dict[int, str] = {}
    for key, value in embeddings.items():
        widths.setdefault(int(value.numel()), key)
    if len(widths) > 1:
        shown = ", ".join(f"{w} (e.g. {k!r})" for w, k in sorted(widths.items()))
        raise DataFormatError(f"{path}: embeddings have different widths {shown}; expected one tower's")
    return embeddings


def load_clipcap_dir(data_dir: str | Path) -> ClipCapData:
    """Read and check an import directory (see module docstring)."""
    data_dir = Path(data_dir)
    conv_file = data_dir / CONVERSATIONS
    if not conv_file.is_file():
        raise DataFormatError(
            f"{conv_file}: missing; run `thinchat data import-clipcap FEATURES.pkl --out {data_dir}`"
        )
    embeddings = load_embeddings(data_dir / EMBEDDINGS)
    _, raw = read_llava_json(conv_file, f"run `thinchat data import-clipcap FEATURES.pkl --out {data_dir}`")
    if not raw:
        raise DataFormatError(f"{conv_file}: expected a non-empty JSON list of conversation entries")
    entries = [parse_entry(entry, index, str(conv_file)) for index, entry in enumerate(raw)]
    for entry in entries:
        if entry.image_embedding not in embeddings:
            raise DataFormatError(
                f"{entry.where}: names image_embedding {entry.image_embedding!r}, "
                f"which {EMBEDDINGS} does not hold"
            )
        if entry.placeholders != 1:
            raise DataFormatError(f"{entry.where}: has {entry.placeholders} <image> placeholders; expected 1")
    meta_file = data_dir / IMPORT_META
    meta = json.loads(meta_file.read_text(encoding="utf-8")) if meta_file.is_file() else {}
    width = int(next(iter(embeddings.values())).numel())
    return ClipCapData(entries, embeddings, width, meta.get("encoder"), data_dir)


def tokenize_entry(
    processor: Any, conversations: list[dict[str, str]], prefix_tokens: int
) -> tuple[list[int], list[int]]:
    """Chat-template tokens with the one ``<image>`` widened to ``prefix_tokens``; labels on assistant turns.

    The assistant mask covers the end-of-turn token, so the model learns to stop there.
    """
    from thinchat.conversation import llava_to_messages

    tokenizer = processor.tokenizer
    out = tokenizer.apply_chat_template(
        llava_to_messages(conversations),
        chat_template=processor.chat_template,
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
    )
    image_id = tokenizer.convert_tokens_to_ids(processor.image_token)
    input_ids: list[int] = []
    labels: list[int] = []
    for token, keep in zip(out["input_ids"], out["assistant_masks"], strict=True):
        count = prefix_tokens if token == image_id else 1
        input_ids += [token] * count
        labels += [token if keep and token != image_id else IGNORE_INDEX] * count
    return input_ids, labels


@dataclass
class ClipCapSample:
    id: str
    input_ids: list[int]
    labels: list[int]
    embedding: torch.Tensor  # (embed_dim,)
    reference: str


def encode_samples(data: ClipCapData, processor: Any, prefix_tokens: int) -> list[ClipCapSample]:
    """Every entry tokenised (first question and answer kept whole), with its embedding."""
    samples = []
    for entry in data.entries:
        ids, labels = tokenize_entry(processor, entry.conversations, prefix_tokens)
        answer = entry.exchanges[0].answer if entry.exchanges else ""
        embedding = data.embeddings[str(entry.image_embedding)].reshape(-1).float()
        samples.append(ClipCapSample(entry.id, ids, labels, embedding, answer))
    return samples


def collate(samples: list[ClipCapSample], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch: ``input_ids``, ``labels``, ``attention_mask`` and the ``embeddings`` (n, width)."""
    width = max(len(s.input_ids) for s in samples)
    ids = torch.full((len(samples), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(samples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(samples), width), dtype=torch.long)
    for row, sample in enumerate(samples):
        n = len(sample.input_ids)
        ids[row, :n] = torch.tensor(sample.input_ids)
        labels[row, :n] = torch.tensor(sample.labels)
        mask[row, :n] = 1
    embeddings = torch.stack([s.embedding for s in samples])
    return {"input_ids": ids, "labels": labels, "attention_mask": mask, "embeddings": embeddings}
