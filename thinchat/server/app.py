"""The OpenAI-compatible FastAPI app: ``/v1/chat/completions`` (JSON or SSE), ``/v1/models``, ``/health``.

The routes only hand over to :class:`thinchat.server.service.ChatService`, which admits, checks and queues
each request; ``thinchat.server.completion`` answers it once it holds the model. A client that hangs up,
streaming or not, frees the model within a token. Every refusal is a 4xx in OpenAI's error shape, so the
``openai`` client raises a typed exception and the server keeps serving.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request

from thinchat.server.api_errors import install_error_handlers
from thinchat.server.schemas import ModelCard, ModelList
from thinchat.server.service import ChatService
from thinchat.server.settings import ServerSettings

__all__ = ["ServerSettings", "create_app"]


def _add_info_routes(app: FastAPI, service: ChatService) -> None:
    """``/health`` and the model listing: cheap routes that never wait for the model."""

    @app.get("/health")
    async def health() -> dict:
        return service.health()

    @app.get("/v1/models")
    async def models(request: Request) -> ModelList:
        service.check_auth(request)
        return ModelList(data=[ModelCard(id=service.model_name, created=service.created)])

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str, request: Request) -> ModelCard:
        service.check_auth(request)
        return service.model_card(model_id)


def _add_chat_route(app: FastAPI, service: ChatService) -> None:
    """``POST /v1/chat/completions``, answered as JSON or as an SSE stream."""

    # No return annotation: FastAPI must not build a response model from it (the route returns either a
    # ChatCompletion or a Response, as before).
    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await service.chat_completions(request)


def create_app(engine: Any, settings: ServerSettings | None = None) -> FastAPI:
    """The FastAPI app serving ``engine`` (a ``thinchat.engine.ChatEngine`` or anything with its API)."""
    service = ChatService(engine, settings or ServerSettings())
    app = FastAPI(title="thinchat", description="OpenAI-compatible chat completions for thin-section images")
    install_error_handlers(app)
    _add_info_routes(app, service)
    _add_chat_route(app, service)
    return app
