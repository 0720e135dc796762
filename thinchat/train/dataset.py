"""Tokenised training samples with labels taken from the chat template's ``{% generation %}`` blocks.

Why the template decides: LLaVA-style trainers that rebuild the prompt by hand and mask by counting
tokens break on every template change ("tokenization mismatch", loss 0). Here the processor renders the
same template used at inference, ``return_assistant_tokens_mask=True`` marks each assistant turn
including its end-of-turn token, and labels are ``input_ids`` there and ``-100`` elsewhere.
Samples are tokenised up front to check them and measure their lengths (with blank stand-in images of
the right size, so image tokens are expanded exactly as at training time); only indices and lengths are
kept, and each ``__getitem__`` tokenises its sample again and loads and preprocesses the real images.
A checkpoint built with tiles (:mod:`thinchat.model.tiling`) has each image expanded into its global
view and tiles here by the same rule the engine uses: the grids come from the image files' headers, the
messages get one image part per view, and ``image_paths`` names each view (a tile as a ``TileRef``, which
the feature cache keys apart from its image).
"""

from __future__ import annotations

import logging
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from thinchat.errors import DataFormatError
from thinchat.model import tiling
from thinchat.train.data import Sample, split_turns
from thinchat.train.exchanges import PAD_EXCHANGE, PREFIX_EXCHANGE, pack_exchanges

log = logging.getLogger(__name__)

IGNORE_INDEX = -100


def with_images(messages: list[dict[str, Any]], images: list[Any]) -> list[dict[str, Any]]:
    """Copy ``messages`` with the i-th ``{"type": "image"}`` part carrying ``images[i]`` (transformers 5 style)."""
    queue = list(reversed(images))
    out = []
    for message in messages:
        content = message["content"]
        if isinstance(content, list):
            if sum(1 for part in content if part["type"] == "image") > len(queue):
                raise DataFormatError("more <image> parts in the messages than images given")
            content = [
                {**part, "image": queue.pop()} if part["type"] == "image" else part for part in content
            ]
        out.append({**message, "content": content})
    return out


def tokenize_messages(processor, messages: list[dict[str, Any]], images: list[Any]) -> dict[str, Any]:
    """``input_ids``, ``labels`` (lists) and ``pixel_values`` for one conversation, via the chat template."""
    out = processor.apply_chat_template(
        with_images(messages, images),
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
        return_tensors="pt",
    )
    input_ids = out["input_ids"][0].tolist()
    mask = out["assistant_masks"][0].tolist()
    labels = [token if keep else IGNORE_INDEX for token, keep in zip(input_ids, mask, strict=True)]
    return {"input_ids": input_ids, "labels": labels, "pixel_values": out.get("pixel_values")}


def blank_images(processor, count: int) -> list[Any]:
    """Stand-in images at the processor's input size: they expand to the same number of image tokens."""
    from PIL import Image

    from thinchat.model.compose import input_size

    height, width = input_size(processor.image_processor)
    return [Image.new("RGB", (width, height)) for _ in range(count)]


#: Turn types whose answer opens with a verdict (yes/no): the converter's ``presence`` questions.
VERDICT_TURNS = frozenset({"presence"})


def verdict_weights(labels: Sequence[int], turn_types: Sequence[str] | None, weight: float) -> list[float]:
    """Per token, the loss weight: ``weight`` on the first label of each verdict turn's answer, else 1.

    The answers are the runs of labelled tokens, in turn order (the template labels each assistant turn
    and its end-of-turn token as one run); a conversation cut by truncation weights the answers it kept.
    """
    weights = [1.0] * len(labels)
    if not turn_types or weight == 1.0:
        return weights
    answer = -1
    for position, label in enumerate(labels):
        starts = label != IGNORE_INDEX and (position == 0 or labels[position - 1] == IGNORE_INDEX)
        if starts:
            answer += 1
            if answer < len(turn_types) and turn_types[answer] in VERDICT_TURNS:
                weights[position] = weight
    return weights


@dataclass
class Encoded:
    sample: Sample
    input_ids: list[int]
    labels: list[int]
    #: per token, the exchange it belongs to (``thinchat.train.exchanges``); None: one causal sequence
    exchange_ids: list[int] | None = None


@dataclass
class SkipCounts:
    too_long: int = 0
    images_do_not_fit: int = 0
    no_answer_left: int = 0

    def total(self) -> int:
        return self.too_long + self.images_do_not_fit + self.no_answer_left


def fit_length(input_ids: list[int], labels: list[int], limit: int, image_token_id: int, policy: str):
    """Cut a too-long sample after its last image token, or return the reason it must be skipped."""
    if len(input_ids) <= limit:
        return input_ids, labels, None
    if policy == "skip":
        return None, None, "too_long"
    last_image = max((i for i, t in enumerate(input_ids) if t == image_token_id), default=-1)
    if last_image + 1 >= limit:
        return None, None, "images_do_not_fit"
    input_ids, labels = input_ids[:limit], labels[:limit]
    if all(label == IGNORE_INDEX for label in labels):
        return None, None, "no_answer_left"
    return input_ids, labels, None


class SupervisedDataset:
    """A map-style dataset of tokenised samples; each item is tokenised and its images loaded on request.

    Why tokenise twice: the up-front pass must tokenise every sample to check it, fit it to
    ``max_length`` (or skip it) and know its length for ``group_by_length``, but keeping the token lists
    would cost far more than the samples (two Python int lists per sample, image tokens included). It
    keeps the kept samples' indices and lengths; ``__getitem__`` renders its one sample again, the same
    way. ``samples`` is any ``Sequence[Sample]``: a list, or a lazy source (``thinchat.train.sources``).
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        processor,
        max_length: int,
        too_long: str = "truncate",
        name: str = "train",
        isolate_exchanges: bool = False,
        verdict_weight: float = 1.0,
        max_tiles: int = 0,
    ) -> None:
        from tqdm.auto import tqdm

        from thinchat.model.compose import input_size

        self.samples = samples
        self.processor = processor
        self.max_length = max_length
        self.too_long = too_long
        #: render each exchange as its own sample and pack them over one shared prefix (turn_layout isolated)
        self.isolate_exchanges = isolate_exchanges
        #: loss weight of each yes/no answer's first token (``TrainConfig.verdict_loss_weight``)
        self.verdict_weight = verdict_weight
        #: the checkpoint's tiles per image (``thinchat.model.tiling``; 0: off) and the tower's input side
        self.max_tiles = max_tiles if max_tiles > 1 else 0
        self.tile_size = max(input_size(processor.image_processor)) if self.max_tiles else 0
        #: False when a feature cache supplies the tower features: images are then never decoded.
        self.load_pixels = True
        self.image_token_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
        self.skipped = SkipCounts()
        self._kept = array("q")
        self._lengths = array("q")
        for index in tqdm(
            range(len(samples)), desc=f"tokenising {name}", unit="sample", disable=len(samples) < 500
        ):
            ids, _, _, reason = self._encode(samples[index])
            if reason is not None:
                setattr(self.skipped, reason, getattr(self.skipped, reason) + 1)
                continue
            self._kept.append(index)
            self._lengths.append(len(ids))
        if self.skipped.total():
            log.warning(
                "%s: skipped %d of %d samples longer than max_length=%d (too long: %d, images alone too long: %d, "
                "no answer left after truncation: %d)",
                name,
                self.skipped.total(),
                len(samples),
                max_length,
                self.skipped.too_long,
                self.skipped.images_do_not_fit,
                self.skipped.no_answer_left,
            )
        if not self._kept:
            raise DataFormatError(
                f"{name}: every sample is longer than max_length={max_length}; raise max_length"
            )

    def _encode(self, sample: Sample):
        """``(input_ids, labels, exchange_ids, None)`` fitted to ``max_length``, or ``(None, None, None,
        reason)`` to skip; ``exchange_ids`` is None unless the sample's exchanges are isolated."""
        if self.isolate_exchanges and sample.turn_types and len(sample.turn_types) > 1:
            parts = [self._tokens(part) for part in split_turns(sample, "per_exchange")]
            ids, labels, exchanges = pack_exchanges(parts, self.image_token_id, sample.where)
        else:
            (ids, labels), exchanges = self._tokens(sample), None
        ids, labels, reason = fit_length(ids, labels, self.max_length, self.image_token_id, self.too_long)
        if exchanges is not None and ids is not None:
            exchanges = exchanges[: len(ids)]
        return ids, labels, exchanges, reason

    def grids(self, sample: Sample, sizes: list[tuple[int, int]] | None = None) -> list[tiling.Grid]:
        """Per image of ``sample``, its tile grid (all ``1 x 1`` with tiles off; with tiles on, from
        ``sizes`` or the image files' headers)."""
        if not self.max_tiles:
            return [(1, 1)] * len(sample.images)
        sizes = sizes or [tiling.image_size(path) for path in sample.images]
        return tiling.slide_grids(sample.messages, sizes, self.max_tiles, self.tile_size)

    def view_refs(self, sample: Sample) -> list[Any]:
        """What the model sees of ``sample``, in order: its image paths, each followed by its tiles'
        ``TileRef`` s with tiles on (the feature cache and the collated ``image_paths`` take these)."""
        if not self.max_tiles:
            return list(sample.images)
        sizes = [tiling.image_size(path) for path in sample.images]
        grids = self.grids(sample, sizes)
        return [
            ref
            for path, size, grid in zip(sample.images, sizes, grids, strict=True)
            for ref in tiling.view_refs(str(path), size, grid)
        ]

    def _tokens(self, sample: Sample) -> tuple[list[int], list[int]]:
        messages, n_views = sample.messages, len(sample.images)
        if self.max_tiles and sample.images:
            grids = self.grids(sample)
            messages = tiling.expand_parts(messages, grids)
            n_views += sum(tiling.tile_count(grid) for grid in grids)
        encoded = tokenize_messages(self.processor, messages, blank_images(self.processor, n_views))
        n_image_tokens = sum(1 for t in encoded["input_ids"] if t == self.image_token_id)
        if n_views and n_image_tokens % n_views:
            raise DataFormatError(f"{sample.where}: image tokens do not split evenly over its images")
        if any(label == self.image_token_id for label in encoded["labels"]):
            raise DataFormatError(
                f"{sample.where}: an assistant turn contains <image>; images go in human turns"
            )
        return encoded["input_ids"], encoded["labels"]

    def __len__(self) -> int:
        return len(self._kept)

    @property
    def lengths(self) -> list[int]:
        return self._lengths.tolist()

    def sample(self, index: int) -> Sample:
        """The ``index``-th kept sample (not tokenised)."""
        return self.samples[self._kept[index]]

    def iter_samples(self) -> Iterator[Sample]:
        """The kept samples in order, parsed one at a time (the feature cache, the projector fit)."""
        return (self.sample(i) for i in range(len(self)))

    def encoded(self, index: int) -> Encoded:
        """The ``index``-th kept sample with its tokens and labels."""
        sample = self.sample(index)
        ids, labels, exchanges, _ = self._encode(sample)
        return Encoded(sample, ids, labels, exchanges)

    @property
    def items(self) -> Sequence[Encoded]:
        """Every kept sample tokenised, computed per access (``items[i]`` is ``encoded(i)``)."""
        return _EncodedView(self)

    def __getitem__(self, index: int) -> dict[str, Any]:
        import torch

        from thinchat.images import load_image

        item = self.encoded(index)
        refs = self.view_refs(item.sample)
        out: dict[str, Any] = {
            "input_ids": torch.tensor(item.input_ids, dtype=torch.long),
            "labels": torch.tensor(item.labels, dtype=torch.long),
            # a path per view: the image's own path for its global view, a TileRef for a tile
            "image_paths": [ref if isinstance(ref, tiling.TileRef) else str(ref) for ref in refs],
        }
        if self.verdict_weight != 1.0:
            weights = verdict_weights(item.labels, item.sample.turn_types, self.verdict_weight)
            out["label_weights"] = torch.tensor(weights, dtype=torch.float32)
        if self.isolate_exchanges:
            exchanges = item.exchange_ids or [PREFIX_EXCHANGE] * len(item.input_ids)
            out["exchange_ids"] = torch.tensor(exchanges, dtype=torch.long)
        if item.sample.images and self.load_pixels:
            images = [
                load_image(path, name=f"{item.sample.where}: {path.name}") for path in item.sample.images
            ]
            if self.max_tiles:
                grids = self.grids(item.sample, [image.size for image in images])
                images = [
                    view
                    for im, grid in zip(images, grids, strict=True)
                    for view in tiling.crop_views(im, grid)
                ]
            out["pixel_values"] = self.processor.image_processor(images, return_tensors="pt")["pixel_values"]
        return out


class _EncodedView(Sequence[Encoded]):
    def __init__(self, dataset: SupervisedDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Encoded:  # type: ignore[override]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self.dataset.encoded(index)


class Collator:
    """Right-pads a batch; stacks every sample's images in order (text-only samples add none).

    ``exchange_ids`` (isolated exchanges) are padded with ``PAD_EXCHANGE``; the trainer turns them into
    the attention mask and position ids (``thinchat.train.exchanges.isolate_exchanges``).
    """

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        width = max(len(f["input_ids"]) for f in features)
        input_ids = torch.full((len(features), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(features), width), dtype=torch.long)
        for row, f in enumerate(features):
            n = len(f["input_ids"])
            input_ids[row, :n] = f["input_ids"]
            labels[row, :n] = f["labels"]
            attention_mask[row, :n] = 1
        batch: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        if any("label_weights" in f for f in features):
            weights = torch.ones((len(features), width), dtype=torch.float32)
            for row, f in enumerate(features):
                if "label_weights" in f:
                    weights[row, : len(f["input_ids"])] = f["label_weights"]
            batch["label_weights"] = weights
        if any("exchange_ids" in f for f in features):
            exchange_ids = torch.full((len(features), width), PAD_EXCHANGE, dtype=torch.long)
            for row, f in enumerate(features):
                n = len(f["input_ids"])
                exchange_ids[row, :n] = f.get("exchange_ids", torch.zeros(n, dtype=torch.long))
            batch["exchange_ids"] = exchange_ids
        pixels = [f["pixel_values"] for f in features if f.get("pixel_values") is not None]
        if pixels:
            batch["pixel_values"] = torch.cat(pixels, dim=0)
        batch["image_paths"] = [p for f in features for p in f.get("image_paths", [])]
        return batch
