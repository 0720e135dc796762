"""Chat prompts for :class:`thinchat.engine.ChatEngine`: checked messages rendered with the checkpoint's
chat template, each ``<image>`` expanded to the model's image tokens, tokenised and held to the context.

Why apart from the engine: every way the engine answers (one streamed answer, one whole answer, a batch
for evaluation and captioning) must build its prompt the same way and refuse the same prompts with the
same error; one :meth:`PromptBuilder.encode` is that way, and :func:`left_pad` lays several of its rows
into one batch so each answer starts at the same position. A checkpoint built with tiles
(:mod:`thinchat.model.tiling`) has each image expanded here, into its global view and tiles, before
anything is rendered or counted, so every caller pays and checks the same tokens.
"""

from __future__ import annotations

from typing import Any

from thinchat.errors import ConfigError, PromptTooLongError, ThinchatError
from thinchat.model import tiling


class PromptBuilder:
    """Renders, checks and tokenises prompts for one processor and one language model's context."""

    def __init__(self, processor: Any, context_limit: int, image_seq_length: int, max_tiles: int = 0) -> None:
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.image_token: str = processor.image_token
        self.context_limit = context_limit
        self.image_seq_length = image_seq_length
        self.special_tokens = [t for t in self.tokenizer.all_special_tokens if t]
        #: the checkpoint's ``max_tiles`` (0 or 1: off) and the tower's input side the tiles are cut for
        self.max_tiles = max_tiles if max_tiles > 1 else 0
        self.tile_size = 0
        if self.max_tiles:
            from thinchat.model.compose import input_size

            self.tile_size = max(input_size(processor.image_processor))

    def budget(self, max_new_tokens: int) -> int:
        """Prompt tokens that fit: the LM's positions minus room for the answer."""
        budget = self.context_limit - max_new_tokens
        if budget <= 0:
            raise ConfigError(
                f"max_new_tokens={max_new_tokens} leaves no room for a prompt in the model's "
                f"{self.context_limit} positions; lower it"
            )
        return budget

    def render(self, messages: list[dict[str, Any]], images: list[Any] | int) -> str:
        """The prompt text with each ``<image>`` expanded to the model's image tokens.

        With tiles, each image of a list counts as its global view and tiles (only the sizes are read,
        nothing is cropped); an ``int`` counts that many views, as given.
        """
        self.check_images(messages, images)
        if self.max_tiles and not isinstance(images, int):
            sizes = [image.size for image in images]
            grids = tiling.slide_grids(messages, sizes, self.max_tiles, self.tile_size)
            messages = tiling.expand_parts(messages, grids)
        return self._render(messages)

    def _render(self, messages: list[dict[str, Any]]) -> str:
        """Checked messages, one image part per view, rendered with each view's image tokens."""
        text = self.processor.apply_chat_template(messages, add_generation_prompt=True)
        return text.replace(self.image_token, self.image_token * self.image_seq_length)

    def check_images(self, messages: list[dict[str, Any]], images: list[Any] | int) -> None:
        """Refuse bad messages (:meth:`check_messages`) and an image count that is not the parts'."""
        self.check_messages(messages)
        n_images = images if isinstance(images, int) else len(images)
        n_parts = sum(
            1
            for m in messages
            if not isinstance(m["content"], str)
            for p in m["content"]
            if p.get("type") == "image"
        )
        if n_parts != n_images:
            raise ThinchatError(
                f"the messages have {n_parts} image part(s) but {n_images} image(s) were given"
            )

    def tokenize(self, text: str) -> Any:
        """``text`` as token ids, as the processor's ``apply_chat_template(tokenize=True)`` gives them: no
        second BOS when the template already starts with one."""
        bos = self.tokenizer.bos_token
        add_special = not (bos is not None and text.startswith(bos))
        return self.tokenizer(text, add_special_tokens=add_special, return_tensors="pt")

    def count_tokens(self, messages: list[dict[str, Any]], images: list[Any] | int) -> int:
        """Prompt length in tokens, image tokens included (no image is encoded to count)."""
        return int(self.tokenize(self.render(messages, images))["input_ids"].shape[1])

    def encode(self, messages: list[dict[str, Any]], images: list[Any], max_new_tokens: int) -> Any:
        """The prompt's token ids (1-D) for answering ``messages``, refused when it does not fit."""
        return self.encode_views(messages, images, max_new_tokens)[0]

    def encode_views(
        self, messages: list[dict[str, Any]], images: list[Any], max_new_tokens: int
    ) -> tuple[Any, list[Any]]:
        """``(token ids, views)``: :meth:`encode`, and the images the model sees in order (each image's
        global view and tiles with tiles on; ``images`` themselves when off).

        Why refuse: a prompt longer than the context minus the answer's room would run past the model's
        positions (an index error or silent garbage); truncating is the caller's choice
        (:func:`thinchat.chat.history.fit`), never the engine's.
        """
        if messages and isinstance(messages[-1], dict) and messages[-1].get("role") != "user":
            raise ThinchatError("the last message must be from the user (it is the question to answer)")
        self.check_images(messages, images)
        messages, views = tiling.expand_tiles(messages, images, self.max_tiles, self.tile_size)
        ids = self.tokenize(self._render(messages))["input_ids"][0]
        length = int(ids.shape[0])
        budget = self.budget(max_new_tokens)
        if length > budget:
            tiles = len(views) - len(images)
            why = (
                f", {tiles} of them tiles of the {len(images)} image(s) given: the checkpoint was built "
                f"with max_tiles={self.max_tiles}"
                if tiles
                else ""
            )
            raise PromptTooLongError(
                f"the conversation needs {length} prompt tokens ({len(views)} image(s) x {self.image_seq_length} "
                f"tokens included{why}) but only {budget} fit ({self.context_limit} positions minus "
                f"max_new_tokens={max_new_tokens}); drop earlier turns or images, or lower max_new_tokens"
            )
        return ids, views

    def check_messages(self, messages: list[dict[str, Any]]) -> None:
        """Refuse messages the template cannot render safely: bad roles or parts, and text carrying the
        model's control tokens (a user could otherwise forge turns or image slots)."""
        if not messages:
            raise ThinchatError("no messages: send at least one user message")
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant"):
                raise ThinchatError(f"message {i}: expected a dict with role system, user or assistant")
            content = message.get("content")
            parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
            if not isinstance(parts, list):
                raise ThinchatError(f"message {i}: content must be a string or a list of parts")
            for part in parts:
                self._check_part(i, part)

    def _check_part(self, i: int, part: Any) -> None:
        if not isinstance(part, dict) or part.get("type") not in ("text", "image"):
            raise ThinchatError(f"message {i}: content parts must be {{'type': 'text'|'image'}}")
        if part["type"] == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise ThinchatError(f"message {i}: a text part needs a string 'text'")
            bad = next((t for t in self.special_tokens if t in text), None)
            if bad is not None:
                raise ThinchatError(
                    f"message {i}: text contains the model's control token {bad!r}; remove it "
                    "(images go in image parts, not as text)"
                )


def left_pad(rows: list[Any], pad: int | None) -> tuple[Any, Any]:
    """``(input_ids, attention_mask)`` of 1-D token rows padded on the left to one width, so every row's
    answer starts at the same position (one row: itself, mask all ones, ``pad`` unused)."""
    import torch

    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad if pad is not None else 0, dtype=rows[0].dtype)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, width - len(row) :] = row
        attention_mask[i, width - len(row) :] = 1
    return input_ids, attention_mask
