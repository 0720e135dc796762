"""Running the app under uvicorn: in the foreground (``thinchat serve``) or on a background thread.

Why a background runner in the package: the tests, the benchmark and notebooks all need a real server on
a free loopback port that starts, reports its URL and stops cleanly; one implementation keeps them honest
(the same uvicorn, the same app, real sockets).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
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


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (for a child process that cannot report its own)."""
    import socket

    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class ServeProcess:
    """``with ServeProcess(["--from_pretrained", d]) as proc: proc.url``: ``thinchat serve`` as a child process.

    Why: the benchmark and the CLI test exercise the real command (argument parsing, model loading,
    uvicorn signal handling), not just the app object. Waits for ``/health``; on exit sends SIGTERM and
    waits for a clean shutdown (kills after ``stop_timeout`` seconds).
    """

    def __init__(
        self,
        args: list[str],
        host: str = "127.0.0.1",
        start_timeout: float = 180.0,
        stop_timeout: float = 20.0,
        output: Path | None = None,
    ) -> None:
        self.host = host
        #: Where the server's own output (uvicorn's access log, warnings, tracebacks) goes; None: inherited.
        #: A benchmark that prints JSON keeps it out of its stdout and can read it back for errors.
        self.output = output
        self.port = free_port(host)
        self.args = ["serve", *args, "--host", host, "--port", str(self.port)]
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.process = None
        self._log = None
        self.returncode: int | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def __enter__(self) -> ServeProcess:
        import subprocess
        import sys
        import urllib.error
        import urllib.request

        log = None if self.output is None else open(self.output, "ab")  # closed in __exit__
        self._log = log
        self.process = subprocess.Popen(
            [sys.executable, "-m", "thinchat", *self.args],
            stdout=log,
            stderr=subprocess.STDOUT if log else None,
        )
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self.process.poll() is not None:
                self.__exit__()  # closes the output file
                where = f"; its output: {self.output}" if self.output else ""
                raise RuntimeError(
                    f"thinchat serve exited with status {self.process.returncode} during start-up{where}"
                )
            try:
                with urllib.request.urlopen(f"http://{self.host}:{self.port}/health", timeout=2):
                    return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError(f"thinchat serve did not answer /health within {self.start_timeout} s")
            time.sleep(0.25)

    def __exit__(self, *exc: object) -> None:
        import subprocess

        if self.process is None:
            return
        self.process.terminate()
        try:
            self.returncode = self.process.wait(timeout=self.stop_timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.returncode = self.process.wait()
        if self._log is not None:
            self._log.close()
