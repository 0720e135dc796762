"""The operator's settings for the server (``thinchat serve`` flags): access rules and request limits."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from thinchat.server.inputs import InputLimits


@dataclass
class ServerSettings:
    """Operator-controlled limits and access rules (``thinchat serve`` flags)."""

    api_key: str | None = None
    allow_dirs: tuple[Path, ...] = field(default_factory=tuple)
    max_concurrency: int = 1
    max_queue: int = 16
    max_image_pixels: int = 4096 * 4096
    max_images: int = 4
    max_image_bytes: int = 8 * 1024 * 1024
    max_request_bytes: int = 20 * 1024 * 1024
    max_messages: int = 256
    max_stop: int = 4
    served_model_name: str | None = None
    #: Answer a question about images after the model's own description of them (thinchat.chat.look),
    #: as the chat demos do; a request's ``look_first`` field overrides it.
    look_first: bool = True

    def limits(self) -> InputLimits:
        dirs = tuple(Path(d).resolve(strict=True) for d in self.allow_dirs)
        return InputLimits(
            max_image_pixels=self.max_image_pixels,
            max_images=self.max_images,
            max_image_bytes=self.max_image_bytes,
            max_messages=self.max_messages,
            max_stop=self.max_stop,
            allow_dirs=dirs,
        )
