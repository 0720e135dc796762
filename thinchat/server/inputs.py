"""OpenAI messages -> engine inputs: transformers-format messages plus the images, in order.

Why a separate module: this is where untrusted request data meets the filesystem and the image decoder.
Images come only from ``data:`` URIs or from files inside directories the operator allowed with
``--allow-dir`` (resolved, so ``..`` and symlinks cannot escape); the server never fetches URLs.

Why two phases: :func:`plan_inputs` does everything that is cheap (counts, roles, base64, each image's
byte size and its pixel count read from the header) so a bad request is refused before it costs memory;
:func:`decode_images` decodes the pixels, and the server calls it only once the request holds a model
slot, so queued requests never hold decoded images.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

from PIL import Image

from thinchat.errors import ImageError, ImageTooLargeError
from thinchat.images import check_pixels, image_errors, load_image
from thinchat.server.api_errors import APIError
from thinchat.server.schemas import ChatMessage, ImagePart, TextPart

_DATA_URI = re.compile(
    r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^;,]*)*?);base64,(?P<data>.*)$", re.S
)


@dataclass(frozen=True)
class InputLimits:
    """What one request may carry; the operator sets these on the command line."""

    max_image_pixels: int = 4096 * 4096
    max_images: int = 4
    max_image_bytes: int = 8 * 1024 * 1024
    max_messages: int = 256
    max_stop: int = 4
    max_stop_chars: int = 256
    allow_dirs: tuple[Path, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class PendingImage:
    """An image that passed the cheap checks (size in bytes, format, pixel count): decoded later."""

    source: bytes | Path
    name: str
    param: str


def _too_many_bytes(size: int, limit: int, param: str) -> APIError:
    return APIError(
        413,
        f"image of {size} bytes exceeds the limit of {limit} bytes per image; send a smaller image "
        "or raise --max-image-bytes",
        param=param,
        code="image_too_large",
    )


def _decode_data_uri(url: str, param: str, max_bytes: int) -> bytes:
    match = _DATA_URI.match(url)
    if match is None:
        raise APIError(
            400,
            "malformed data URI: expected 'data:image/<type>;base64,<data>'",
            param=param,
            code="invalid_image_url",
        )
    mime = match.group("mime") or ""
    if mime and not mime.startswith("image/"):
        raise APIError(
            400,
            f"data URI has media type '{mime}', expected an image (image/png, image/jpeg...)",
            param=param,
            code="invalid_image",
        )
    data = re.sub(r"\s+", "", match.group("data"))
    if len(data) // 4 * 3 > max_bytes:  # refused before the base64 is decoded
        raise _too_many_bytes(len(data) // 4 * 3, max_bytes, param)
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise APIError(
            400,
            f"image data URI is not valid base64 ({exc}); encode the file bytes with base64",
            param=param,
            code="invalid_base64",
        ) from exc
    if not raw:
        raise APIError(400, "image data URI is empty", param=param, code="invalid_image")
    return raw


def resolve_allowed_path(raw: str, allow_dirs: tuple[Path, ...], param: str) -> Path:
    """The real path of ``raw`` (a ``file://`` URL or a plain path) if it lies inside an allowed directory.

    The path is fully resolved (symlinks, ``..``) before the containment check, so a link inside an
    allowed directory that points outside is refused. The message never says whether a refused file exists.
    """
    if not allow_dirs:
        raise APIError(
            403,
            "this server does not read local files (start it with --allow-dir DIR to allow "
            "a directory); send the image as a data URI instead",
            param=param,
            code="path_not_allowed",
        )
    if raw.startswith("file:"):
        parsed = urlparse(raw)
        if parsed.netloc not in ("", "localhost"):
            raise APIError(
                400,
                f"file URL with a remote host '{parsed.netloc}' is not supported",
                param=param,
                code="invalid_image_url",
            )
        raw = unquote(parsed.path)
    if "\x00" in raw:
        raise APIError(400, "image path contains a NUL byte", param=param, code="invalid_image_url")
    candidate = Path(raw)
    if not candidate.is_absolute():
        raise APIError(
            400,
            f"image path '{raw}' is relative; send an absolute path inside an allowed directory",
            param=param,
            code="invalid_image_url",
        )
    real = candidate.resolve(strict=False)
    if not any(real.is_relative_to(d) for d in allow_dirs):
        raise APIError(
            403,
            f"image path '{raw}' is outside the directories this server may read",
            param=param,
            code="path_not_allowed",
        )
    if not real.is_file():
        raise APIError(
            400,
            f"image file '{raw}' not found in the allowed directories",
            param=param,
            code="image_not_found",
        )
    return real


def _check_header(source: bytes | Path, name: str, limits: InputLimits, param: str) -> None:
    """Refuse non-images and images over the pixel cap from the header alone (no pixel is decoded)."""
    try:
        with (
            image_errors(name),
            Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img,
        ):
            check_pixels(
                img, name, limits.max_image_pixels, hint="downscale the image or raise --max-image-pixels"
            )
    except ImageError as exc:
        raise _image_api_error(exc, param) from exc


def _image_api_error(exc: ImageError, param: str) -> APIError:
    """413 for an image over the limits, 400 for anything else wrong with it."""
    if isinstance(exc, ImageTooLargeError):
        return APIError(413, str(exc), param=param, code="image_too_large")
    return APIError(400, str(exc), param=param, code="invalid_image")


def plan_image(url: str, limits: InputLimits, param: str) -> PendingImage:
    """Check one ``image_url`` cheaply (scheme, path, bytes, header) or raise a 4xx ``APIError``."""
    url = url.strip()
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme in ("http", "https", "ftp", "s3", "gs"):
        raise APIError(
            400,
            f"remote image URLs ({scheme}://) are not fetched by this server; send the image "
            "as a base64 data URI",
            param=param,
            code="remote_url_refused",
        )
    if scheme == "data":
        source: bytes | Path = _decode_data_uri(url, param, limits.max_image_bytes)
        name = "image data URI"
    else:
        source = resolve_allowed_path(url, limits.allow_dirs, param)
        size = source.stat().st_size
        if size > limits.max_image_bytes:
            raise _too_many_bytes(size, limits.max_image_bytes, param)
        name = f"image file '{url}'"
    _check_header(source, name, limits, param)
    return PendingImage(source, name, param)


def decode_images(pending: list[PendingImage], limits: InputLimits) -> list[Image.Image]:
    """Decode the planned images to RGB (corrupt or truncated data -> 400 naming the part)."""
    images = []
    for item in pending:
        try:
            images.append(load_image(item.source, max_pixels=limits.max_image_pixels, name=item.name))
        except ImageError as exc:
            raise _image_api_error(exc, item.param) from exc
    return images


def _too_many_messages(count: int, limits: InputLimits) -> APIError:
    return APIError(
        400,
        f"too many messages: {count}, at most {limits.max_messages} per request",
        param="messages",
        code="too_many_messages",
    )


def _too_many_stops(count: int, limits: InputLimits) -> APIError:
    return APIError(
        400, f"too many stop strings: {count}, at most {limits.max_stop}", param="stop", code="invalid_value"
    )


def check_counts(messages: object, stop: object, limits: InputLimits) -> None:
    """Refuse too many messages or stop strings from the raw JSON, before validating their items."""
    if isinstance(messages, list) and len(messages) > limits.max_messages:
        raise _too_many_messages(len(messages), limits)
    if isinstance(stop, list) and len(stop) > limits.max_stop:
        raise _too_many_stops(len(stop), limits)


def check_stop(stop: str | list[str] | None, limits: InputLimits) -> list[str]:
    """The request's stop strings as a list, within ``max_stop`` strings of ``max_stop_chars`` each."""
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > limits.max_stop:
        raise _too_many_stops(len(stops), limits)
    for i, text in enumerate(stops):
        if len(text) > limits.max_stop_chars:
            raise APIError(
                400,
                f"stop string {i} has {len(text)} characters, at most {limits.max_stop_chars}",
                param=f"stop[{i}]",
                code="invalid_value",
            )
    return stops


def plan_inputs(messages: list[ChatMessage], limits: InputLimits) -> tuple[list[dict], list[PendingImage]]:
    """Transformers chat messages whose ``{"type": "image"}`` parts match the returned images in order.

    Refuses an empty conversation, more than ``limits.max_messages`` messages, a last message that is
    not from the user, a user turn with neither text nor image, and more images than
    ``limits.max_images``. Images are checked but not decoded (see :func:`decode_images`).
    """
    if not messages:
        raise APIError(
            400,
            "'messages' is empty; send at least one user message",
            param="messages",
            code="empty_messages",
        )
    if len(messages) > limits.max_messages:
        raise _too_many_messages(len(messages), limits)
    out: list[dict] = []
    images: list[PendingImage] = []
    for i, message in enumerate(messages):
        role = "system" if message.role == "developer" else message.role
        parts: list[dict] = []
        content = message.content
        if isinstance(content, str):
            content = [TextPart(type="text", text=content)]
        for j, part in enumerate(content or []):
            param = f"messages[{i}].content[{j}]"
            if isinstance(part, TextPart):
                if part.text.strip():
                    parts.append({"type": "text", "text": part.text})
                continue
            assert isinstance(part, ImagePart)
            if role != "user":
                raise APIError(
                    400,
                    f"images are only accepted in user messages, not '{message.role}'",
                    param=param,
                    code="invalid_value",
                )
            if len(images) >= limits.max_images:
                raise APIError(
                    400,
                    f"too many images: at most {limits.max_images} per request",
                    param=param,
                    code="too_many_images",
                )
            url = part.image_url if isinstance(part.image_url, str) else part.image_url.url
            images.append(plan_image(url, limits, f"{param}.image_url"))
            parts.append({"type": "image"})
        if not parts:
            if role == "user":
                raise APIError(
                    400,
                    f"message {i} from the user is empty; send text or an image",
                    param=f"messages[{i}].content",
                    code="empty_message",
                )
            continue
        out.append({"role": role, "content": parts})
    if not out or out[-1]["role"] != "user":
        raise APIError(
            400, "the last message must come from the user", param="messages", code="invalid_value"
        )
    return out, images
