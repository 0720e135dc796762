"""A ClipCap checkpoint presented as a Llava model + processor pair, so every front end can drive it.

Why an adapter and not a second generator: the chat engine, ``thinchat eval`` and ``thinchat caption``
already drive a Llava through ``processor(images=..., text=...)``, ``get_image_features`` and
``generate(mm_encoder_outputs=...)``. A ClipCap model differs only in what an "image" becomes: one
pooled embedding (stored, or computed by the CLIP tower the data came from) mapped by the prefix MLP to
``k`` LM input embeddings. So :class:`ClipCapProcessor` turns each image (or :class:`StoredEmbedding`)
into one row of ``pixel_values`` (the embedding) and expands ``<image>`` to ``k`` tokens, and
:class:`ClipCapModel` turns those rows into ``k`` features per image through the prefix and hands them to
the unchanged Llava as ``mm_encoder_outputs``, transformers' own hook for pre-computed image features.
Generation, stopping, KV-cache reuse and batching are the Llava's own.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from thinchat.clipcap.data import StoredEmbedding
from thinchat.clipcap.encoder import PooledImageEncoder
from thinchat.clipcap.prefix import ClipCapPrefix
from thinchat.errors import ModelSpecError
from thinchat.model.unwrap import unwrap_llava


class ClipCapModel(nn.Module):
    """Llava (bare, peft-wrapped or merged) + ClipCap prefix; ``pixel_values`` are pooled embeddings."""

    def __init__(self, llava: Any, prefix: ClipCapPrefix, stop_ids: Sequence[int] = ()) -> None:
        super().__init__()
        self.llava = llava
        self.prefix = prefix
        base = unwrap_llava(llava)
        hidden = base.get_input_embeddings().weight.shape[1]
        if prefix.hidden != hidden:
            raise ModelSpecError(
                f"the ClipCap prefix makes {prefix.hidden}-wide LM embeddings but the language model is "
                f"{hidden} wide; the prefix was trained for another base model"
            )
        # The engine reads image_seq_length from the config: here each image is k prefix tokens.
        self.config = copy.copy(base.config)
        self.config.image_seq_length = prefix.prefix_tokens
        #: Tokens that end an answer (EOS and the template's end-of-turn), used when generate gets none.
        self.stop_ids = list(stop_ids)

    @property
    def device(self) -> torch.device:
        return next(self.llava.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.llava.parameters()).dtype

    @property
    def generation_config(self) -> Any:
        return self.llava.generation_config

    def get_image_features(self, pixel_values: torch.Tensor, return_dict: bool = True, **_: Any) -> Any:
        """``k`` LM input embeddings per pooled embedding, as Llava's ``get_image_features`` returns them."""
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        weight = next(self.prefix.parameters())
        features = self.prefix(pixel_values.to(weight.device, weight.dtype)).to(self.dtype)
        return BaseModelOutputWithPooling(pooler_output=list(features))

    def _encoded(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        pixel_values = kwargs.pop("pixel_values", None)
        if pixel_values is not None:
            kwargs["mm_encoder_outputs"] = {"image": self.get_image_features(pixel_values)}
        return kwargs

    def forward(self, **kwargs: Any) -> Any:
        return self.llava(**self._encoded(kwargs))

    def save_pretrained(self, directory: str | Path, **kwargs: Any) -> None:
        """A standalone export (``thinchat export --merge``): the Llava as a standard directory (merged
        LoRA) with the prefix files beside it, which :func:`load_clipcap` reads back."""
        self.llava.save_pretrained(directory, **kwargs)
        self.prefix.save(directory)

    def generate(self, **kwargs: Any) -> Any:
        """Llava's ``generate``; stops at the chat template's end-of-turn token unless told otherwise."""
        if kwargs.get("eos_token_id") is None and self.stop_ids:
            kwargs["eos_token_id"] = self.stop_ids
        return self.llava.generate(**self._encoded(kwargs))


class ClipCapImageProcessor:
    """Images (or stored embeddings) -> ``pixel_values`` rows: the pooled embedding each image stands for."""

    def __init__(self, encoder: PooledImageEncoder) -> None:
        self.encoder = encoder

    def __call__(self, images: Sequence[Any], return_tensors: str = "pt", **_: Any) -> Any:
        from transformers import BatchFeature

        items = list(images)
        rows: list[torch.Tensor | None] = [None] * len(items)
        to_encode = []
        for i, item in enumerate(items):
            if isinstance(item, StoredEmbedding):
                rows[i] = item.tensor.reshape(-1).float()
            elif isinstance(item, torch.Tensor):
                rows[i] = item.reshape(-1).float()
            else:
                to_encode.append(i)
        if to_encode:
            encoded = self.encoder([items[i] for i in to_encode])
            for i, row in zip(to_encode, encoded, strict=True):
                rows[i] = row
        for i, row in enumerate(rows):
            if row is not None and row.numel() != self.encoder.width:
                name = items[i].key if isinstance(items[i], StoredEmbedding) else f"input {i}"
                raise ModelSpecError(
                    f"embedding {name} is {row.numel()} wide but this ClipCap checkpoint takes "
                    f"{self.encoder.width}-wide embeddings ({self.encoder.spec or 'its training tower'}); "
                    "use embeddings from the same tower"
                )
        return BatchFeature({"pixel_values": torch.stack(rows)}, tensor_type=return_tensors)


class ClipCapProcessor:
    """The checkpoint's Llava processor, with each ``<image>`` expanded to the prefix's ``k`` tokens."""

    def __init__(self, processor: Any, prefix_tokens: int, image_processor: ClipCapImageProcessor) -> None:
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.chat_template = processor.chat_template
        self.image_token = processor.image_token
        self.prefix_tokens = prefix_tokens
        self.image_processor = image_processor

    def apply_chat_template(self, *args: Any, **kwargs: Any) -> Any:
        return self.processor.apply_chat_template(*args, **kwargs)

    def save_pretrained(self, *args: Any, **kwargs: Any) -> Any:
        return self.processor.save_pretrained(*args, **kwargs)

    def __call__(
        self, images: Sequence[Any] | None = None, text: str | Sequence[str] | None = None, **kwargs: Any
    ) -> Any:
        texts = [text] if isinstance(text, str) else list(text or [])
        expanded = [t.replace(self.image_token, self.image_token * self.prefix_tokens) for t in texts]
        bos = self.tokenizer.bos_token
        # As the processor's apply_chat_template(tokenize=True): no second BOS when the template has one.
        add_special = not (bos is not None and expanded and expanded[0].startswith(bos))
        kwargs.setdefault("return_tensors", "pt")
        encoded = self.tokenizer(expanded, add_special_tokens=add_special, **kwargs)
        n_placeholders = sum(t.count(self.image_token) for t in texts)
        n_images = len(images or [])
        if n_placeholders != n_images:
            raise ModelSpecError(
                f"the prompt has {n_placeholders} <image> placeholder(s) but {n_images} image(s) were given"
            )
        if images:
            encoded["pixel_values"] = self.image_processor(images)["pixel_values"]
        return encoded


def load_clipcap(
    path: str | Path, device: str | None = None, dtype: Any = None, merge: bool = False
) -> tuple[ClipCapModel, ClipCapProcessor]:
    """``(ClipCapModel, ClipCapProcessor)`` for a ``clipcap`` stage output, in eval mode.

    The Llava part loads through :func:`thinchat.model.checkpoint.load_llava` (a LoRA adapter is wrapped or
    merged as for any LoRA checkpoint; a frozen-LM run loads its base), so the two cannot drift.
    """
    from transformers import AutoProcessor

    from thinchat.generation import stop_token_ids
    from thinchat.model.checkpoint import CHECKPOINT_META, base_model_path, is_adapter_dir, load_llava

    path = Path(path).expanduser()
    prefix = ClipCapPrefix.load(path)
    if is_adapter_dir(path) or (path / "config.json").is_file():  # LoRA run, or a merged export
        llava, processor = load_llava(path, device=device, dtype=dtype, merge=merge)
    else:  # a frozen-LM run: the prefix and processor only, the base Llava unchanged
        if not (path / CHECKPOINT_META).is_file():
            raise ModelSpecError(
                f"{path}: ClipCap prefix without {CHECKPOINT_META}; which base model is it for?"
            )
        llava, _ = load_llava(base_model_path(path), device=device, dtype=dtype)
        processor = AutoProcessor.from_pretrained(path)
    prefix = prefix.to(device) if device else prefix
    model = ClipCapModel(llava, prefix, stop_token_ids(llava, processor.tokenizer)).eval()
    encoder = PooledImageEncoder(prefix.encoder, prefix.embed_dim, device=device)
    return model, ClipCapProcessor(processor, prefix.prefix_tokens, ClipCapImageProcessor(encoder))
