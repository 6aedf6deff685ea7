"""The FastAPI app: OpenAI's `/v1/chat/completions`, `/v1/completions` and `/v1/models`, `/health`, `/metrics`, the
steering extensions (`/v1/steering/info`, `/v1/steering/compare`) and the web page at `/`.

Each route decodes the body (decode.py), makes one engine call and encodes the answer (encode.py); every error
becomes a status in one place (errors.py). It serves the gRPC servicer's engine, metrics and roles (`Backend`), so
both APIs share one engine, one admission queue and one set of counters.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from grpc import StatusCode  # the metrics' code label (service/status.py): one vocabulary for both APIs
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from ..engine_api import CompareStreams, EngineClient, RequestStream, collect, compare_result
from ..errors import InvalidArgumentError, NotFoundError, UnavailableError
from ..monitor_feed import MonitorSubscription, front_end
from ..service.auth import Access
from ..service.metrics import Metrics
from ..service.status import status_of
from ..types import EngineLimits, GenerationResult, TokenEvent
from . import decode, encode, sse, watch
from .errors import error_body, http_error

__all__ = ["MAX_BODY_BYTES", "Backend", "create_app"]

STATIC = Path(__file__).parent / "static"
# As gRPC's text RPCs: a prompt at the default limit is 4096 tokens x 64 characters x 4 UTF-8 bytes = 1 MiB.
MAX_BODY_BYTES = 2 * 1024 * 1024
_DISCONNECT_POLL_S = 0.25
_CLIENT_GONE = 499  # "client closed request" (nginx's): the status of an answer nobody is left to read
_FEED_POLL_S = 0.5  # how soon a watcher notices that the server is stopping
_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
JSON = dict[str, Any]
T = TypeVar("T")


class Backend(Protocol):
    """What the app serves: the gRPC servicer (service/servicer.py) fits."""

    metrics: Metrics
    access: Access
    draining: bool

    @property
    def engine(self) -> EngineClient:
        """Raises UnavailableError until an engine is attached."""


def create_app(backend: Backend, registry: CollectorRegistry | None = None) -> FastAPI:
    """The HTTP app over `backend`; `/metrics` serves `registry` (404 when None)."""
    app = FastAPI(title="steering-server", docs_url=None, redoc_url=None, openapi_url=None)
    created = int(time.time())

    @app.get("/health")
    async def health() -> Response:
        try:
            serving = backend.engine.healthy and not backend.draining
        except UnavailableError:
            serving = False
        return JSONResponse({"status": "SERVING" if serving else "NOT_SERVING"}, status_code=200 if serving else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        if registry is None:
            return JSONResponse(error_body("metrics are off", "not_found_error", None, "not_found"), status_code=404)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models() -> Response:
        return await _call("Models", lambda: {"object": "list", "data": [encode.model_card(_engine().model_info(),
                                                                                           created)]})

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> Response:
        def card() -> JSON:
            info = _engine().model_info()
            if model_id != info.model_id:
                raise NotFoundError("model", model_id, "model")
            return encode.model_card(info, created)

        return await _call("Models", card)

    @app.get("/v1/steering/info")
    async def info() -> Response:
        def answer() -> JSON:
            engine = _engine()
            return encode.info(engine.model_info(), engine.limits, engine.list_directions(), engine.get_policy())

        return await _call("Info", answer)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await _generation(request, "ChatCompletions", decode.chat_request, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await _generation(request, "Completions", decode.completion_request, chat=False)

    @app.post("/v1/steering/compare")
    async def compare(request: Request) -> Response:
        started = time.monotonic()
        try:
            engine = _engine()
            req, stream = decode.compare_request(await _json_body(request), engine.limits)
            with front_end("http", "Compare"):  # the monitor feed's label for these requests
                opened = await engine.open_compare(req)
        except Exception as exc:
            return _fail("Compare", exc, started)
        seed = req.sampling.seed
        if stream:
            return StreamingResponse(
                _compare_events(opened, seed, started), media_type="text/event-stream", headers=_SSE_HEADERS
            )
        try:
            with _metered("Compare", started, opened.streams, opened.cancel):
                results = await _unless_gone(request, asyncio.gather(*(collect(s) for s in opened.streams)))
        except _ClientGone:
            return Response(status_code=_CLIENT_GONE)
        except Exception as exc:
            return _error_response(exc)
        return JSONResponse(encode.compare_response(compare_result(opened.variants, results), seed))

    @app.get("/v1/steering/monitor")
    async def monitor(request: Request) -> Response:
        """The live monitor feed (WatchMonitor) for observers: `Authorization: Bearer <observer or admin token>`."""
        started = time.monotonic()
        try:
            engine = _engine()
            backend.access.check_observer([("authorization", request.headers.get("authorization", ""))])
            subscription = engine.watch_monitor(watch.watch_filter(request.query_params))
        except Exception as exc:
            return _fail("WatchMonitor", exc, started)
        return StreamingResponse(_feed(subscription, started), media_type="text/event-stream", headers=_SSE_HEADERS)

    @app.get("/")
    async def page() -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    def _engine() -> EngineClient:
        if backend.draining:
            raise UnavailableError("the server is shutting down")
        return backend.engine

    async def _call(rpc: str, answer: Callable[[], JSON]) -> Response:
        started = time.monotonic()
        try:
            body = answer()
        except Exception as exc:
            return _fail(rpc, exc, started)
        _ok(rpc, started)
        return JSONResponse(body)

    def _fail(rpc: str, exc: BaseException, started: float) -> Response:
        backend.metrics.observe(f"http.{rpc}", status_of(exc)[0], time.monotonic() - started)
        return _error_response(exc)

    def _error_response(exc: BaseException) -> Response:
        status, body = http_error(exc)
        return JSONResponse(body, status_code=status)

    def _ok(rpc: str, started: float) -> None:
        backend.metrics.observe(f"http.{rpc}", StatusCode.OK, time.monotonic() - started)

    def _cancelled(rpc: str, started: float) -> None:
        backend.metrics.observe(f"http.{rpc}", StatusCode.CANCELLED, time.monotonic() - started)

    @contextmanager
    def _metered(
        rpc: str, started: float, streams: tuple[RequestStream, ...], cancel: Callable[[], None] | None = None
    ) -> Iterator[None]:
        """A generation call's metrics, whatever way it ends: OK when the block ends; CANCELLED when the client
        went away (CancelledError in a stream, _ClientGone in a non-streamed call); any other error's status (the
        exception goes on to the caller, which answers it). Then `cancel` (frees the requests at once) and the
        tokens and scores of every generation that ended, a cancelled one's too (as the gRPC servicer counts)."""
        try:
            yield
        except (asyncio.CancelledError, _ClientGone):
            _cancelled(rpc, started)
            raise
        except Exception as exc:
            backend.metrics.observe(f"http.{rpc}", status_of(exc)[0], time.monotonic() - started)
            raise
        else:
            _ok(rpc, started)
        finally:
            if cancel is not None:
                cancel()
            for s in streams:
                backend.metrics.generation(f"http.{rpc}", s.final(), started)

    async def _generation(
        request: Request, rpc: str, decoder: Callable[[JSON, EngineLimits, str], decode.Decoded], chat: bool
    ) -> Response:
        started = time.monotonic()
        try:
            engine = _engine()
            model_id = engine.model_info().model_id
            decoded = decoder(await _json_body(request), engine.limits, model_id)
            with front_end("http", rpc):  # the monitor feed's label ("ChatCompletions", "Completions")
                stream = await engine.open_stream(decoded.request)
        except Exception as exc:
            return _fail(rpc, exc, started)
        response_id = f"{'chatcmpl' if chat else 'cmpl'}-{stream.request_id}"
        seed = decoded.request.sampling.seed
        if decoded.stream:
            chunks = sse.Chunks(chat, response_id, int(time.time()), model_id)
            events = _generation_events(stream, chunks, seed, decoded.include_usage, rpc, started)
            return StreamingResponse(events, media_type="text/event-stream", headers=_SSE_HEADERS)
        try:
            with _metered(rpc, started, (stream,)):
                result = await _unless_gone(request, collect(stream))
        except _ClientGone:
            return Response(status_code=_CLIENT_GONE)
        except Exception as exc:
            return _error_response(exc)
        whole = encode.chat_completion if chat else encode.completion
        return JSONResponse(whole(result, seed, model_id, response_id, int(time.time())))

    async def _generation_events(
        stream: RequestStream, chunks: sse.Chunks, seed: int, include_usage: bool, rpc: str, started: float
    ) -> AsyncIterator[str]:
        try:
            with _metered(rpc, started, (stream,), stream.cancel):
                async for event in stream:
                    yield sse.event(chunks.token(event))
                result = await stream.result()
                yield sse.event(chunks.final(result, seed))
                if include_usage:
                    yield sse.event(chunks.usage(result))
                yield "data: [DONE]\n\n"
        except Exception as exc:  # the status line is sent: the error is the last event (OpenAI does the same)
            yield sse.event(http_error(exc)[1])

    async def _compare_events(opened: CompareStreams, seed: int, started: float) -> AsyncIterator[str]:
        names = [v.name for v in opened.variants]
        results: list[GenerationResult | None] = [None] * len(names)
        try:
            with _metered("Compare", started, opened.streams, opened.cancel):
                yield sse.event({"object": "steering.compare.start", "seed": seed, "variants": names})
                async for i, item in sse.merged(opened.streams):
                    if isinstance(item, TokenEvent):
                        yield sse.event({"object": "steering.compare.token", "variant": i,
                                         "text_delta": item.text_delta, **encode.token_extension(item)["token"]})
                    else:
                        results[i] = item
                        yield sse.event({"object": "steering.compare.variant", "variant": i, "name": names[i],
                                         "text": item.text, "text_tail": item.text_tail,
                                         **encode.result_extension(item, seed)})
                done = [r for r in results if r is not None]
                yield sse.event(encode.compare_response(compare_result(opened.variants, done), seed))
                yield "data: [DONE]\n\n"
        except Exception as exc:  # as above: the error is the last event
            yield sse.event(http_error(exc)[1])

    async def _feed(subscription: MonitorSubscription, started: float) -> AsyncIterator[str]:
        try:
            yield ": watching\n\n"  # a first byte at once: the client knows it is subscribed
            while not backend.draining:  # a stopping server ends its watchers (they would hold the grace period)
                try:
                    item = await asyncio.wait_for(subscription.next(), _FEED_POLL_S)
                except TimeoutError:
                    continue
                if item is None:
                    break
                yield sse.event(watch.event_json(*item))
            _ok("WatchMonitor", started)
        except asyncio.CancelledError:
            _cancelled("WatchMonitor", started)
            raise
        finally:
            subscription.close()

    return app


class _ClientGone(Exception):
    """The client of a non-streamed call left; its work was cancelled. (Raising CancelledError out of a route makes
    uvicorn log an ASGI error with a traceback.)"""


async def _unless_gone(request: Request, work: Awaitable[T]) -> T:
    """`work`'s result; cancelled (freeing its requests) once the client has gone. uvicorn does not cancel a
    handler whose client left, and a finished-but-unread generation would hold an admission slot until its end."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=_DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                raise _ClientGone
    finally:
        task.cancel()


async def _json_body(request: Request) -> JSON:
    """The body as a JSON object, refused past MAX_BODY_BYTES before it is all read."""
    data = bytearray()
    async for part in request.stream():
        data += part
        if len(data) > MAX_BODY_BYTES:
            raise InvalidArgumentError("request", f"the body is more than this endpoint takes ({MAX_BODY_BYTES} bytes)")
    try:
        body = json.loads(bytes(data))
    except (ValueError, RecursionError) as exc:  # not JSON, not UTF-8, nested too deep, a 5000-digit number
        raise InvalidArgumentError("request", f"the body is not JSON: {str(exc)[:200]}") from None
    if not isinstance(body, dict):
        raise InvalidArgumentError("request", "the body must be a JSON object")
    return body
