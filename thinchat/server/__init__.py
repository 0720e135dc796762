"""OpenAI-compatible HTTP server for a thinchat checkpoint (``thinchat serve``).

Public API: :func:`create_app` (a FastAPI app around a ``ChatEngine``), :class:`ServerSettings`
(limits, API key, allowed directories), :func:`serve` (foreground uvicorn) and
:class:`BackgroundServer` (a live loopback server for tests, benchmarks and notebooks).
"""

from thinchat.server.app import ServerSettings, create_app
from thinchat.server.runner import BackgroundServer, serve

__all__ = ["BackgroundServer", "ServerSettings", "create_app", "serve"]
