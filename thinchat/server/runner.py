"""Running the app under uvicorn: in the foreground (``thinchat serve``) or on a background thread.

Why a background runner in the package: the tests, the benchmark and notebooks all need a real server on
a free loopback port that starts, reports its URL and stops cleanly; one implementation keeps them honest
(the same uvicorn, the same app, real sockets).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from thinchat.server.app import ServerSettings, create_app


def serve(
    engine: Any, settings: ServerSettings, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info"
) -> None:
    """Serve ``engine`` until interrupted (Ctrl-C / SIGTERM)."""
    import uvicorn

    uvicorn.run(
        create_app(engine, settings), host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5
    )


class BackgroundServer:
    """``with BackgroundServer(engine, settings) as server: server.url`` -> a live server on 127.0.0.1.

    Binds port 0 so the OS picks a free port, waits until uvicorn is accepting connections, and on exit
    asks uvicorn to shut down and joins its thread.
    """

    def __init__(
        self,
        engine: Any,
        settings: ServerSettings | None = None,
        host: str = "127.0.0.1",
        start_timeout: float = 30.0,
    ) -> None:
        import uvicorn

        config = uvicorn.Config(
            create_app(engine, settings), host=host, port=0, log_level="warning", timeout_graceful_shutdown=5
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="thinchat-server", daemon=True)
        self._start_timeout = start_timeout
        self.host = host
        self.port = 0

    @property
    def url(self) -> str:
        """Base URL of the OpenAI API (``http://127.0.0.1:PORT/v1``)."""
        return f"http://{self.host}:{self.port}/v1"

    def __enter__(self) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + self._start_timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the server thread exited during start-up; see the log above")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start within {self._start_timeout} s")
            time.sleep(0.02)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=15)
