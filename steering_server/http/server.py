"""uvicorn inside the gRPC server's event loop: the same process, engine and loop as gRPC.

uvicorn's own `serve()` takes over SIGINT/SIGTERM; `steering-server serve` owns those (service/server.py), so this
binds the socket itself (a busy port is an OSError, as for gRPC), runs uvicorn's startup and tick loop, and stops it
on request, giving running responses (SSE streams included) `grace` seconds with the port still open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

import uvicorn
from prometheus_client import CollectorRegistry

from .app import Backend, create_app

__all__ = ["HttpServer"]

log = logging.getLogger(__name__)


class HttpServer:
    """Create in the running event loop, `await start()`, then `await stop(grace)`. `port` 0 picks a free one;
    `self.port` is the bound port after start."""

    def __init__(
        self, backend: Backend, host: str = "127.0.0.1", port: int = 0, registry: CollectorRegistry | None = None
    ) -> None:
        self.host = host
        self.port = port
        self._app = create_app(backend, registry)
        self._server: uvicorn.Server | None = None
        self._socket: socket.socket | None = None
        self._ticks: asyncio.Task[None] | None = None

    async def start(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.bind((self.host.strip("[]"), self.port))
        except OSError as exc:
            sock.close()
            raise OSError(f"cannot listen on {self.host}:{self.port} (HTTP): {exc.strerror or exc}") from exc
        sock.set_inheritable(True)
        self._socket = sock
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self._app, lifespan="off", log_level="warning", access_log=False)
        config.load()
        self._server = uvicorn.Server(config)
        self._server.lifespan = config.lifespan_class(config)  # what uvicorn's serve() sets before startup()
        await self._server.startup(sockets=[sock])
        self._ticks = asyncio.ensure_future(self._server.main_loop())  # uvicorn's Date header and exit flag
        log.info("HTTP (OpenAI-compatible API, web page) on http://%s:%d/", self.host, self.port)

    async def stop(self, grace: float | None = None) -> None:
        server = self._server
        if server is None:
            return
        self._server = None
        # As gRPC's port (service/server.py): open while running responses finish, new calls answering 503 (the
        # servicer is draining); a closed port looks like a crash. Then whatever still runs is cancelled.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (grace or 0.0)
        while server.server_state.tasks and loop.time() < deadline:
            await asyncio.sleep(0.02)
        server.config.timeout_graceful_shutdown = 0
        server.should_exit = True
        if self._ticks is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticks
        await server.shutdown(sockets=[self._socket] if self._socket is not None else None)
