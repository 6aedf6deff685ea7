"""The grpc.aio server: SteeringService, health checking, reflection; attaching the engine; graceful stop.

Health is NOT_SERVING until an engine whose start-up canary passed is attached, and again, for good, once the
engine dies or the server stops. The port is open (answering UNAVAILABLE) while the engine loads.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry
from steering_client import pb, pb_grpc
from steering_client._channel import MAX_MESSAGE_BYTES

from ..audit_log import AuditLog
from ..config import EngineConfig
from ..engine_api import EngineClient
from ..heap import startup_objects_frozen
from .auth import Access, AuthInterceptor, is_loopback
from .metrics import Metrics
from .metrics_http import MetricsHttpServer
from .servicer import SteeringServicer
from .status import safe_deserializer

if TYPE_CHECKING:
    from ..http import HttpServer

__all__ = ["SERVICE_NAME", "SteeringServer", "Tls", "serve"]

log = logging.getLogger(__name__)

SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["SteeringService"].full_name  # "steering.v1.SteeringService"
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
MAX_REQUEST_BYTES = 16 * 1024 * 1024
# Requests that carry text: a prompt at the default limit is 4096 tokens x 64 characters x 4 UTF-8 bytes = 1 MiB.
_MAX_BODY = {name: 2 * 1024 * 1024 for name in ("Generate", "GenerateStream", "Compare", "Score", "Tokenize")}

StartEngine = Callable[[EngineConfig], Awaitable[EngineClient]]


@dataclass(frozen=True)
class Tls:
    """PEM bytes: the server's certificate chain and key; with `client_ca`, clients must present a certificate it
    signed (mutual TLS)."""

    cert: bytes
    key: bytes
    client_ca: bytes | None = None

    @classmethod
    def from_files(cls, cert: str, key: str, client_ca: str | None = None) -> Tls:
        return cls(Path(cert).read_bytes(), Path(key).read_bytes(), Path(client_ca).read_bytes() if client_ca else None)


class SteeringServer:
    """Create inside the running event loop, then `await start()`, `await attach(engine)`, `await stop()`.

    Roles (auth.py): administrative RPCs need `admin_token`, or `open_admin` on a loopback `host` (refused on any
    other address). With `tls` the port speaks only TLS (mutual TLS with `tls.client_ca`)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        metrics_registry: CollectorRegistry | None = None,
        admin_token: str | None = None,
        *,
        observer_token: str | None = None,
        open_admin: bool = False,
        tls: Tls | None = None,
        audit_log: AuditLog | None = None,
    ) -> None:
        if open_admin and not is_loopback(host):
            raise ValueError(f"--open-admin is only allowed on a loopback address, not {host!r}; use a token")
        access = Access(admin_token, observer_token, open_admin)
        self._engine: EngineClient | None = None
        self._loop = asyncio.get_running_loop()
        metrics = Metrics(metrics_registry, engine=lambda: self._engine)
        self.servicer = SteeringServicer(metrics=metrics, access=access, audit=audit_log)
        self.audit_log = audit_log
        self.health = HealthServicer()
        self._server = grpc.aio.server(
            interceptors=[AuthInterceptor(access)],
            options=[
                # Checked by grpc before anything is parsed (a 16 MiB Score response froze the server for 56 s):
                # the largest honest request is a direction table, 128 layers x 16384 floats = 8 MiB.
                ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.so_reuseport", 0),  # a second server on a busy port must fail, not split the traffic
            ]
        )
        _add_servicer(self.servicer, self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        health_name = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
        reflection.enable_server_reflection((SERVICE_NAME, health_name, reflection.SERVICE_NAME), self._server)
        try:
            address = f"{host}:{port}"
            if tls is None:
                self.port = self._server.add_insecure_port(address)  # the bound port when `port` is 0
            else:
                credentials = grpc.ssl_server_credentials(
                    [(tls.key, tls.cert)],
                    root_certificates=tls.client_ca,
                    require_client_auth=tls.client_ca is not None,
                )
                self.port = self._server.add_secure_port(address, credentials)
        except RuntimeError as exc:  # grpc reports a failed bind this way
            hint = "try another --port, or --port 0 for a free one"
            raise OSError(f"cannot listen on {host}:{port}: {exc} ({hint})") from exc

    async def start(self) -> None:
        await self._set_health(_NOT_SERVING)  # HealthServicer starts out SERVING
        await self._server.start()
        # Not "listening" yet: calls get UNAVAILABLE and health NOT_SERVING until an engine is attached.
        log.info("port %d open; health NOT_SERVING until the engine has loaded and passed its canary", self.port)

    async def attach(self, engine: EngineClient) -> None:
        """Serve `engine` (its canary has run); health follows `engine.healthy` and turns off when it dies."""
        self._engine = engine
        self.servicer.attach(engine)
        if self.audit_log is not None:  # every alert of every request, whichever front end it came through
            engine.monitor_feed.add_sink(self.audit_log.alert_sink)
        engine.add_death_callback(self._on_engine_death)
        await self._set_health(_SERVING if engine.healthy else _NOT_SERVING)

    async def stop(self, grace: float | None = None) -> None:
        """Refuse new calls, let running ones finish for `grace` seconds, then cancel them. While they finish the
        port stays open: health answers NOT_SERVING and new calls UNAVAILABLE (a closed port looks like a crash)."""
        await self.health.enter_graceful_shutdown()
        self.servicer.draining = True
        deadline = self._loop.time() + (grace or 0.0)
        # Watches never end by themselves: they get the events of the calls still finishing, then end (OK).
        while self.servicer.in_flight > self.servicer.watching and self._loop.time() < deadline:
            await asyncio.sleep(0.02)
        self.servicer.end_watches()
        while self.servicer.in_flight and self._loop.time() < deadline:
            await asyncio.sleep(0.02)
        await self._server.stop(max(0.0, deadline - self._loop.time()) if grace is not None else None)

    async def wait_for_termination(self) -> None:
        await self._server.wait_for_termination()

    def _on_engine_death(self, exc: BaseException) -> None:
        # Called once from any thread (the engine's loop thread, typically).
        try:
            self._loop.call_soon_threadsafe(self._engine_died, exc)
        except RuntimeError:  # the event loop is already closed: nothing left to tell
            pass

    def _engine_died(self, exc: BaseException) -> None:
        log.error("engine died; health is NOT_SERVING and calls fail with UNAVAILABLE: %r", exc)
        self._loop.create_task(self._set_health(_NOT_SERVING))

    async def _set_health(self, status: health_pb2.HealthCheckResponse.ServingStatus.ValueType) -> None:
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)


class _Handlers:
    """Stands in for a server to collect the handlers the generated code registers."""

    def __init__(self) -> None:
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}

    def add_generic_rpc_handlers(self, handlers: object) -> None:
        pass

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self.handlers = handlers


def _add_servicer(servicer: SteeringServicer, server: grpc.aio.Server) -> None:
    """The generated registration, with request parsing that cannot fail (status.safe_deserializer)."""
    collected = _Handlers()
    pb_grpc.add_SteeringServiceServicer_to_server(servicer, collected)
    handlers = {
        name: h._replace(  # type: ignore[attr-defined]
            request_deserializer=safe_deserializer(h.request_deserializer, _MAX_BODY.get(name, MAX_REQUEST_BYTES))
        )
        for name, h in collected.handlers.items()
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


async def serve(
    config: EngineConfig,
    host: str,
    port: int,
    start_engine: StartEngine,
    metrics_port: int | None = None,
    grace: float = 10.0,
    on_serving: Callable[[int], None] | None = None,
    admin_token: str | None = None,
    *,
    observer_token: str | None = None,
    open_admin: bool = False,
    tls: Tls | None = None,
    http_port: int | None = None,
    audit_log: str | None = None,
) -> None:
    """Run until SIGTERM or SIGINT: listen, start the engine (health turns SERVING after its canary), serve,
    then stop gracefully (running calls get `grace` seconds) and shut the engine down. `on_serving` gets the
    bound port once the engine is attached. Roles and TLS: see SteeringServer. `http_port`: also serve the
    OpenAI-compatible HTTP API and the web page (steering_server.http, plaintext) on the same engine.
    `audit_log`: the JSON-lines file alerts and policy and registry changes are appended to (audit_log.py)."""
    registry = CollectorRegistry() if metrics_port is not None or http_port is not None else None
    audit = AuditLog(audit_log) if audit_log is not None else None
    server = SteeringServer(
        host,
        port,
        registry,
        admin_token,
        observer_token=observer_token,
        open_admin=open_admin,
        tls=tls,
        audit_log=audit,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    engine: EngineClient | None = None
    http: HttpServer | None = None
    starting = asyncio.ensure_future(start_engine(config))
    stopping = asyncio.ensure_future(stop.wait())
    metrics_http: MetricsHttpServer | None = None
    try:
        await server.start()
        if http_port is not None:
            from ..http import HttpServer  # fastapi and uvicorn load only when asked for

            http = HttpServer(server.servicer, host, http_port, registry)
            await http.start()
            if tls is not None and not is_loopback(host):
                log.warning("HTTP on %s:%d is plaintext (gRPC uses TLS): put a TLS proxy in front", host, http.port)
        if registry is not None and metrics_port is not None:
            metrics_http = MetricsHttpServer(registry, host, metrics_port)
            log.info("metrics on http://%s:%d/metrics", host, metrics_http.port)
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if starting.done():
            engine = starting.result()  # a failed start raises here
            # The model, tokenizer and modules out of the collector's full passes; its one full collection runs here,
            # before health turns SERVING, not under the first requests.
            with startup_objects_frozen():
                await server.attach(engine)
                # Ready only now (health SERVING): scripts wait for these lines (the port is the last word of the
                # first).
                log.info("listening on port %d", server.port)
                log.info("serving %s on %s:%d (health SERVING)", engine.model_info().model_id, host, server.port)
                if on_serving is not None:
                    on_serving(server.port)
                await stopping
        log.info("stopping")
    finally:
        for task in (starting, stopping):
            task.cancel()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await asyncio.gather(server.stop(grace), *([http.stop(grace)] if http is not None else []))
        if metrics_http is not None:
            metrics_http.close()
        if engine is not None:
            await engine.shutdown()
        if audit is not None:
            audit.close()
