"""The one chat engine behind the CLI demo, the web demo, the OpenAI-compatible server and pseudo-labelling.

Why one engine: the projects thinchat learns from each had a loader and a prompt builder per front end,
and they drifted (fine-tuned weights that did not load in the web demo, images re-encoded every turn).
Here every front end calls :class:`ChatEngine`, which

* loads any checkpoint through :func:`thinchat.model.loading.load_pretrained` (LoRA adapters are merged in
  memory, so decoding pays no adapter overhead);
* renders prompts with the processor's chat template (the one training used) and expands each
  ``<image>`` into the model's image tokens (:mod:`thinchat.prompting`), the same way and within the
  same budget for one answer and for a batch; a checkpoint built with ``--max-tiles`` has each large
  image shown as its global view and tiles there (:mod:`thinchat.model.tiling`), as training showed it;
* encodes each image once: projected image features are cached by a hash of the pixels and handed to
  ``generate`` as ``mm_encoder_outputs`` (transformers' own hook for pre-computed encoder outputs), so a
  follow-up question, or an OpenAI client re-sending the same image with every request, does not run
  the vision tower again, and the token ids are exactly those of the plain processor path;
* keeps the KV cache of the last exchange and, when the next prompt starts with the same tokens (a
  follow-up question, or an OpenAI client re-sending the conversation), only prefills the new tokens,
  so time to first token does not grow with the history;
* looks first where asked (:mod:`thinchat.chat.look`): the model's own description of a slide is asked
  once, kept per image, and laid before the question in the same way for every caller, so the chat
  demos, the server, batch captioning and evaluation give the same answer to the same question;
* serialises generation with a lock (the server shares one engine across requests).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from thinchat.chat.history import Turn, fit
from thinchat.chat.look import Descriptions, at_once, insert_looks, look_messages, look_question
from thinchat.errors import ImageError, ThinchatError
from thinchat.generation import (
    GenerationSettings,
    decode_attention,
    last_position_logits,
    stop_token_ids,
    stream_in_thread,
)
from thinchat.images import image_key
from thinchat.model.compose import max_positions
from thinchat.model.tiling import max_tiles_of
from thinchat.precision import default_device
from thinchat.prompting import PromptBuilder, left_pad

__all__ = ["ChatEngine", "GenerationSettings"]

#: Context assumed for language models that do not declare a position limit.
DEFAULT_CONTEXT = 4096
#: Shortest shared prompt prefix worth reusing the previous KV cache for.
MIN_PREFIX_REUSE = 16
#: How many images' projected features the engine keeps (LRU); one slide pair costs ~100 KB-1 MB.
FEATURE_CACHE_SIZE = 64


class ChatEngine:
    """A loaded Llava checkpoint plus everything needed to chat with it (see module docstring)."""

    def __init__(
        self,
        model,
        processor,
        *,
        name: str = "thinchat",
        settings: GenerationSettings | None = None,
        reuse_prefix: bool = True,
    ):
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.name = name
        self.settings = settings or GenerationSettings()
        config = model.config
        self.context_limit: int = max_positions(config.text_config) or DEFAULT_CONTEXT
        self.image_token: str = processor.image_token
        self.image_token_id: int = config.image_token_id
        self.image_seq_length: int = int(config.image_seq_length)
        self.stop_token_ids: list[int] = stop_token_ids(model, self.tokenizer)
        #: ``generate`` arguments every call passes: the LM head on the last position only (see there)
        self._logits_kwargs = last_position_logits(model)
        #: the checkpoint's tiles per image (``thinchat build --max-tiles``; 0: off), see ``prompting``
        self.max_tiles: int = max_tiles_of(config)
        self.prompts = PromptBuilder(processor, self.context_limit, self.image_seq_length, self.max_tiles)
        self._lock = threading.Lock()
        self._features: OrderedDict[str, Any] = OrderedDict()
        #: Reuse the KV cache of the previous exchange for a shared prompt prefix (see module docstring).
        self.reuse_prefix = reuse_prefix
        # (token ids the cache covers, the cache, {image start position: pixel hash})
        self._prefix: tuple[Any, Any, dict[int, str]] | None = None
        self._placed: dict[int, str] = {}
        #: Prompt tokens taken from the cache in the last generation (0 = full prefill), for tests/benches.
        self.last_reused_tokens = 0
        #: (look question, pixel hash of each image) -> the model's description (see ``look``)
        self.descriptions = Descriptions()

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        device: str | None = None,
        dtype: Any = None,
        settings: GenerationSettings | None = None,
    ) -> ChatEngine:
        """Load a base, stage-1, LoRA or merged checkpoint directory (LoRA is merged in memory).

        ``device`` None: the GPU when there is one (a model left on the CPU of a GPU machine decodes
        several times slower); ``dtype`` None / "auto": bf16 there, and on a CPU whose bf16 matmuls
        measure faster.
        """
        from thinchat.model.loading import load_pretrained

        device = device or default_device()
        model, processor = load_pretrained(path, device=device, dtype=dtype, merge=True)
        return cls(model, processor, name=Path(path).expanduser().resolve().name, settings=settings)

    # ----- one-shot calls (a multi-turn conversation is a ``thinchat.chat.session.ChatSession(engine)``) ---
    def describe(self, images: list[Any], prompt: str, **overrides: Any) -> str:
        """One question about ``images`` (pseudo-labelling, captioning): the whole answer, stripped."""
        turn = Turn(question=prompt, images=list(images))
        messages, shown, _ = self.fit_turns([turn], None, self.resolve(**overrides))
        return self.generate_text(messages, shown, **overrides).strip()

    def stream_messages(
        self, messages: list[dict[str, Any]], images: list[Any], **overrides: Any
    ) -> Iterator[str]:
        """Stateless streaming for the OpenAI server: yields text pieces of the answer to ``messages``.

        ``messages`` are transformers chat messages whose ``{"type": "image"}`` parts match ``images`` in
        order. Nothing is truncated: a conversation longer than the context raises
        ``PromptTooLongError`` (the server answers 400), as OpenAI's API does. Bad input raises when this
        is called, before the first piece; the lock is taken when iteration starts and released when
        the iterator finishes or is closed (closing it early cancels the generation).
        """
        settings = self.resolve(**overrides)
        inputs = self._inputs(messages, images, settings)  # bad input fails here, before any streaming
        return self._stream(inputs, settings)

    def _stream(self, inputs: dict[str, Any], settings: GenerationSettings) -> Iterator[str]:
        with self._lock:
            yield from stream_in_thread(
                self._run_generate, self._generate_kwargs(inputs, settings), self.tokenizer
            )

    def generate_text(self, messages: list[dict[str, Any]], images: list[Any], **overrides: Any) -> str:
        """Like :meth:`stream_messages` but returns the whole answer at once (no thread, no streamer)."""
        settings = self.resolve(**overrides)
        inputs = self._inputs(messages, images, settings)
        with self._lock:
            output = self._run_generate(**self._generate_kwargs(inputs, settings))
        return self._decode(output.sequences, inputs["input_ids"].shape[1])[0]

    def generate_batch(
        self,
        conversations: Sequence[list[dict[str, Any]]],
        images: Sequence[list[Any]],
        max_new_tokens: int,
        **generate_kwargs: Any,
    ) -> list[str]:
        """Greedy answers to several prompts in one ``generate`` (``thinchat eval``, ``caption``, replay).

        ``conversations[i]`` are transformers chat messages whose image parts match ``images[i]`` (may
        be empty). Each prompt is rendered and tokenized as for a chat (:meth:`render`), rows are padded
        on the left so every row's answer starts at the same position, and the images go in as
        projected features (:meth:`image_features`). Greedy, no repetition penalty: deterministic and
        comparable between checkpoints. No KV cache is kept (the next batch shares no prefix).
        """
        import torch

        encoded = [
            self.prompts.encode_views(m, imgs, max_new_tokens)
            for m, imgs in zip(conversations, images, strict=True)
        ]
        rows = [ids for ids, _ in encoded]
        views = [view for _, row_views in encoded for view in row_views]  # tiles too, when on
        pad = self._pad_id()
        input_ids, attention_mask = left_pad(rows, pad)
        kwargs: dict[str, Any] = {
            "input_ids": input_ids.to(self.model.device),
            "attention_mask": attention_mask.to(self.model.device),
        }
        with self._lock:
            kwargs.update(self._image_inputs(views))
            with torch.inference_mode(), decode_attention(self.model.device):
                out = self.model.generate(
                    **kwargs,
                    do_sample=False,
                    num_beams=1,
                    max_new_tokens=max_new_tokens,
                    eos_token_id=self.stop_token_ids,
                    pad_token_id=pad,
                    **self._logits_kwargs,
                    **generate_kwargs,
                )
        return [text.strip() for text in self._decode(out, input_ids.shape[1])]

    def _pad_id(self) -> int | None:
        """The token a batch is padded with: the tokenizer's pad token, else its end of sequence."""
        pad = self.tokenizer.pad_token_id
        return pad if pad is not None else self.tokenizer.eos_token_id

    def _decode(self, sequences: Any, prompt_width: int) -> list[str]:
        """Each row's answer: the tokens after the (padded) prompt, special tokens dropped."""
        return self.tokenizer.batch_decode(sequences[:, prompt_width:], skip_special_tokens=True)

    # ----- looking first (thinchat.chat.look) --------------------------------------------------------
    def look_settings(self) -> GenerationSettings:
        """How every description for looking is decoded: greedy, with the engine's length and repetition
        penalty, whatever the caller samples its answer with, so a slide has one description whichever
        interface asked for it first."""
        return self.settings.with_overrides(temperature=0.0, seed=None)

    def look(self, images: list[Any], text: str) -> tuple[str, Iterator[str]]:
        """The description question asked before ``text`` about ``images``, and its answer's pieces:
        streamed the first time (and then kept), the kept description at once after that."""
        question = look_question(text)
        key = self.descriptions.key(question, images)
        cached = self.descriptions.get(key)
        if cached is not None:
            return question, at_once(cached)
        messages = look_messages(question, len(images))
        pieces = self.stream_messages(messages, images, **self.look_settings().to_dict())
        return question, self.descriptions.keep(key, pieces)

    def description(self, images: list[Any], text: str) -> str:
        """The model's description of ``images`` asked before ``text`` (kept per image, see :meth:`look`)."""
        return "".join(self.look(images, text)[1]).strip()

    def looked(self, messages: list[dict[str, Any]], images: list[Any]) -> list[dict[str, Any]]:
        """``messages`` laid out to look first (:func:`thinchat.chat.look.insert_looks`), each slide's
        description generated once and kept; the images that go with the messages are unchanged."""
        return insert_looks(
            messages, lambda first, n, text: self.description(images[first : first + n], text)
        )

    def looked_batch(
        self, conversations: Sequence[list[dict[str, Any]]], images: Sequence[list[Any]]
    ) -> list[list[dict[str, Any]]]:
        """:meth:`looked` for many conversations, the missing descriptions generated in one batch."""
        wanted: dict[tuple[str, ...], tuple[str, list[Any]]] = {}
        for messages, imgs in zip(conversations, images, strict=True):

            def note(first: int, n: int, text: str, imgs=imgs) -> str:
                key = self.descriptions.key(text, imgs[first : first + n])
                if self.descriptions.get(key) is None:
                    wanted[key] = (text, imgs[first : first + n])
                return ""

            insert_looks(messages, note)
        if wanted:
            settings = self.look_settings()
            texts = self.generate_batch(
                [look_messages(q, len(imgs)) for q, imgs in wanted.values()],
                [imgs for _, imgs in wanted.values()],
                settings.max_new_tokens,
                repetition_penalty=settings.repetition_penalty,
            )
            for key, text in zip(wanted, texts, strict=True):
                self.descriptions.put(key, text)
        return [self.looked(m, imgs) for m, imgs in zip(conversations, images, strict=True)]

    def resolve(self, **overrides: Any) -> GenerationSettings:
        """The engine's settings with per-call overrides (``None`` keeps the default)."""
        return self.settings.with_overrides(**overrides)

    # ----- prompt building ---------------------------------------------------------------------------
    def prompt_budget(self, settings: GenerationSettings) -> int:
        """Prompt tokens that fit: the LM's positions minus room for the answer."""
        return self.prompts.budget(settings.max_new_tokens)

    def fit_turns(
        self, turns: list[Turn], system: str | None, settings: GenerationSettings
    ) -> tuple[list[dict[str, Any]], list[Any], int]:
        """Messages and images for ``turns``, dropping the oldest whole turns to fit the budget."""
        return fit(turns, system, self.count_tokens, self.prompt_budget(settings))

    def render(self, messages: list[dict[str, Any]], images: list[Any] | int) -> str:
        """The prompt text with each ``<image>`` expanded to the model's image tokens."""
        return self.prompts.render(messages, images)

    def _tokenize(self, text: str) -> Any:
        return self.prompts.tokenize(text)

    def count_tokens(self, messages: list[dict[str, Any]], images: list[Any] | int) -> int:
        """Prompt length in tokens, image tokens included (no image is encoded to count)."""
        return self.prompts.count_tokens(messages, images)

    # ----- images -----------------------------------------------------------------------------------
    def image_features(self, images: list[Any]) -> list[Any]:
        """Projected features (``[image_tokens, hidden]`` each) for ``images``, from the cache when seen before."""
        import torch

        keys = [image_key(image) for image in images]
        missing = {key: image for key, image in zip(keys, images, strict=True) if key not in self._features}
        if missing:
            try:
                pixels = self.processor.image_processor(images=list(missing.values()), return_tensors="pt")
            except (OSError, ValueError, TypeError) as exc:
                raise ImageError(f"could not preprocess the image(s): {exc}") from exc
            pixel_values = pixels["pixel_values"].to(self.model.device, self.model.dtype)
            with torch.inference_mode():
                output = self.model.get_image_features(pixel_values=pixel_values, return_dict=True)
            for key, feature in zip(missing, output.pooler_output, strict=True):
                if feature.shape[0] != self.image_seq_length:
                    raise ThinchatError(
                        f"the vision tower gave {feature.shape[0]} image tokens, the config expects "
                        f"{self.image_seq_length}; the checkpoint's processor and model disagree"
                    )
                self._features[key] = feature.detach()
        for key in keys:
            self._features.move_to_end(key)
        features = [self._features[key] for key in keys]  # before eviction: a batch may exceed the cache
        while len(self._features) > FEATURE_CACHE_SIZE:
            self._features.popitem(last=False)
        return features

    # ----- generation --------------------------------------------------------------------------------
    def _inputs(
        self, messages: list[dict[str, Any]], images: list[Any], settings: GenerationSettings
    ) -> dict:
        """One prompt's generate() inputs, encoded and checked as every batch row is (``prompts.encode``)."""
        ids, views = self.prompts.encode_views(messages, images, settings.max_new_tokens)
        input_ids, attention_mask = left_pad([ids], self._pad_id())
        inputs: dict[str, Any] = {
            "input_ids": input_ids.to(self.model.device),
            "attention_mask": attention_mask.to(self.model.device),
        }
        if views:
            inputs["images"] = views  # each image's global view and tiles when the checkpoint tiles
        return inputs

    def _image_inputs(self, images: list[Any]) -> dict[str, Any]:
        """generate()'s ``mm_encoder_outputs`` for ``images`` (lock held): their projected features, from
        the cache where seen before, in place of pixels; nothing when there are no images."""
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        if not images:
            return {}
        features = self.image_features(images)
        return {"mm_encoder_outputs": {"image": BaseModelOutputWithPooling(pooler_output=features)}}

    def _generate_kwargs(self, inputs: dict[str, Any], settings: GenerationSettings) -> dict[str, Any]:
        """Called with the lock held: reuses the cached prefix, encodes (or fetches) the image features
        the uncached part needs, and assembles generate() args."""
        import torch

        kwargs = {k: v for k, v in inputs.items() if k != "images"}
        images = inputs.get("images") or []
        ids = inputs["input_ids"][0]
        starts = (ids == self.image_token_id).nonzero().flatten()[:: self.image_seq_length].tolist()
        placed = {start: image_key(image) for start, image in zip(starts, images, strict=True)}
        reused, cache = self._take_prefix(ids, placed)
        self._placed = placed
        if cache is not None:
            kwargs["past_key_values"] = cache
        kwargs.update(
            self._image_inputs(
                [image for image, start in zip(images, starts, strict=True) if start >= reused]
            )
        )
        if settings.seed is not None:
            torch.manual_seed(settings.seed)
        kwargs.update(settings.generate_kwargs())
        kwargs["eos_token_id"] = self.stop_token_ids
        kwargs["pad_token_id"] = self.tokenizer.pad_token_id
        kwargs["return_dict_in_generate"] = True
        kwargs.update(self._logits_kwargs)
        return kwargs

    def _take_prefix(self, ids, placed: dict[int, str]) -> tuple[int, Any]:
        """Hand over the previous KV cache cropped to the prompt prefix it shares with ``ids``.

        ``placed`` maps each image's first token position to the image's pixel hash: image placeholders
        are the same token ids whatever the picture, so the shared prefix also ends at the first image
        that differs from the cached one at that position. The cut never falls inside an image's tokens
        (images before it are in the cache, images after it are passed as features) and at least one
        prompt token is left to prefill. The cache is taken out of the engine either way, so a failed
        generation cannot leave a half-written one behind.
        """
        import torch

        previous, self._prefix = self._prefix, None
        self.last_reused_tokens = 0
        if not self.reuse_prefix or previous is None:
            return 0, None
        cached_ids, cache, cached_placed = previous
        n = min(len(cached_ids), len(ids) - 1)
        same = (cached_ids[:n] == ids[:n]).to(torch.int8)
        shared = n if bool(same.all()) else int(same.argmin())
        for start, key in sorted(placed.items()):
            if start < shared and (cached_placed.get(start) != key or start + self.image_seq_length > shared):
                shared = start
                break
        # Sliding-window layers (Gemma 3) drop old states and cannot be cut back: prefill those in full.
        croppable = getattr(cache, "is_croppable", False) and not any(getattr(cache, "is_sliding", [True]))
        if shared < MIN_PREFIX_REUSE or not croppable:
            return 0, None
        cache.crop(shared - cache.get_seq_length())
        self.last_reused_tokens = shared
        return shared, cache

    def _run_generate(self, **kwargs: Any):
        """``model.generate`` that keeps the resulting KV cache for the next prompt (lock held).

        Attention runs without cuDNN on a GPU (``decode_attention``: no graph build per decode step).
        """
        with decode_attention(self.model.device):
            output = self.model.generate(**kwargs)
        cache = getattr(output, "past_key_values", None)
        if self.reuse_prefix and cache is not None:
            length = cache.get_seq_length()
            self._prefix = (output.sequences[0, :length].clone(), cache, self._placed)
        return output
