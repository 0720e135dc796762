"""Error types that carry a user-facing message.

Every error a user can cause (bad file, bad spec, bad config) is a ``ThinchatError``: the CLI prints its
message without a traceback and exits with status 2, servers turn it into a 4xx response. Messages say
what was wrong, where (file and line when known) and what to do.
"""

from __future__ import annotations


class ThinchatError(Exception):
    """Base class for errors caused by user input rather than by a bug."""


class ModelSpecError(ThinchatError):
    """A model spec (preset, hub id, directory, gguf file) could not be resolved or loaded."""


class ImageError(ThinchatError):
    """An image is missing, unreadable, not an image, or too large."""


class ImageTooLargeError(ImageError):
    """An image over the pixel cap, or a decompression bomb (a server answers 413, not 400)."""


class UnreadableImageError(ImageError):
    """Data that is not an image, or a corrupt or truncated one."""


class ConfigError(ThinchatError):
    """A config file or override names an unknown key or an out-of-range value."""


class DataFormatError(ThinchatError):
    """A dataset or captions file does not match the expected format."""


class PromptTooLongError(ThinchatError):
    """A prompt (image tokens included) does not fit in the language model's context."""
