"""OpenAI-compatible HTTP server for a thinchat checkpoint (``thinchat serve``).

Public API: :func:`create_app` (a FastAPI app around a ``ChatEngine``), :class:`ServerSettings`
(limits, API key, allowed directories), :func:`serve` (foreground uvicorn) and
:class:`BackgroundServer` (a live loopback server in this process) and :class:`ServeProcess`
(``thinchat serve`` as a child process, for tests and the benchmark).
"""

from thinchat.server.app import ServerSettings, create_app
from thinchat.server.runner import BackgroundServer, ServeProcess, free_port, serve

__all__ = ["BackgroundServer", "ServeProcess", "ServerSettings", "create_app", "free_port", "serve"]
