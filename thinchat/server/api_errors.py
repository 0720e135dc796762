"""HTTP errors in OpenAI's error shape, and the FastAPI handlers that emit them.

Why one exception type: every rejection (bad base64, forbidden path, unknown model, full queue...) must
reach the client as the same JSON the official ``openai`` client parses into a typed exception, with the
parameter that was wrong, and must never take the server down.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from thinchat.errors import ImageError, PromptTooLongError, ThinchatError
from thinchat.server.schemas import error_body

log = logging.getLogger(__name__)

#: OpenAI's ``type`` for each status the server sends.
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
}


class APIError(Exception):
    """A request the server refuses: HTTP ``status`` with an OpenAI error body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type_: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type_ or _TYPES.get(status, "invalid_request_error")
        self.headers = headers

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def engine_error(exc: ThinchatError) -> APIError:
    """The 400 for an error the engine raised: a prompt over the context and a bad image get their own
    ``code`` (``context_length_exceeded``, ``invalid_image``) so clients can tell them apart."""
    if isinstance(exc, PromptTooLongError):
        return APIError(400, str(exc), param="messages", code="context_length_exceeded")
    if isinstance(exc, ImageError):
        return APIError(400, str(exc), param="messages", code="invalid_image")
    return APIError(400, str(exc), code="invalid_request")


def _loc_to_param(loc: tuple) -> str:
    """``("body", "messages", 0, "content")`` -> ``messages[0].content`` (OpenAI's ``param`` style)."""
    out = ""
    for part in loc:
        if part == "body":
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "body"


def validation_error(exc: Exception) -> APIError:
    """Turn a pydantic ``ValidationError`` (or FastAPI's wrapper) into a 400 naming the first bad field."""
    errors = exc.errors() if hasattr(exc, "errors") else []
    if not errors:
        return APIError(400, f"invalid request: {exc}")
    first = errors[0]
    param = _loc_to_param(tuple(first.get("loc", ())))
    if first.get("type") == "json_invalid":
        return APIError(400, "request body is not valid JSON; send a JSON object", code="invalid_json")
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return APIError(
        400, f"invalid value for '{param}': {first.get('msg')}{more}", param=param, code="invalid_value"
    )


def install_error_handlers(app: FastAPI) -> None:
    """Make every error, including 404/405 from routing and unexpected bugs, answer in OpenAI's shape."""

    @app.exception_handler(APIError)
    async def _api_error(_request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error(exc).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return APIError(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None)).response()

    @app.exception_handler(Exception)
    async def _bug(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error while serving a request")
        return APIError(500, f"internal server error ({type(exc).__name__}); see the server log").response()
