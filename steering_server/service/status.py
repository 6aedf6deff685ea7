"""The one place where errors become gRPC statuses, and the wrappers that put every RPC method through it.

Per-request errors (`steering_server.errors`) become their status with the message naming the field; anything
else is a server bug: logged with its traceback and answered INTERNAL without details.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
import grpc.aio

from ..errors import (
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    SteeringError,
    UnauthenticatedError,
    UnavailableError,
)
from .metrics import Metrics

__all__ = ["Unparseable", "safe_deserializer", "status_of", "streaming", "unary"]

log = logging.getLogger(__name__)

_CODES: tuple[tuple[type[SteeringError], grpc.StatusCode], ...] = (
    (InvalidArgumentError, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (PermissionDeniedError, grpc.StatusCode.PERMISSION_DENIED),
    (ResourceExhaustedError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (UnavailableError, grpc.StatusCode.UNAVAILABLE),  # EngineDeadError included
    (UnauthenticatedError, grpc.StatusCode.UNAUTHENTICATED),
)

Req = TypeVar("Req")
Resp = TypeVar("Resp")
UnaryMethod = Callable[[Any, Req, grpc.aio.ServicerContext], Awaitable[Resp]]
StreamMethod = Callable[[Any, Req, grpc.aio.ServicerContext], AsyncIterator[Resp]]


class Unparseable:
    """What a request body that does not parse becomes (safe_deserializer), so the RPC wrappers can answer
    INVALID_ARGUMENT: otherwise grpc answers UNKNOWN with the exception's name and logs a traceback per call."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


def safe_deserializer(parse: Callable[[bytes], Any], max_bytes: int) -> Callable[[bytes], Any]:
    """`parse` that never raises, and refuses a body over `max_bytes` before parsing it (parsing runs on the event
    loop: a body that takes long to parse stalls every other call, health checks included)."""

    def deserialize(data: bytes) -> Any:
        if len(data) > max_bytes:
            return Unparseable(ValueError(f"{len(data)} bytes is more than this method takes ({max_bytes})"))
        try:
            return parse(data)
        except Exception as exc:  # DecodeError: invalid UTF-8 in a string, a truncated field, wire-type mismatch
            return Unparseable(exc)

    return deserialize


def _admit(servicer: Any, request: object) -> None:
    if getattr(servicer, "draining", False):
        raise UnavailableError("the server is shutting down")
    if isinstance(request, Unparseable):
        raise InvalidArgumentError("request", f"the message was not parsed: {str(request.error)[:200]}")


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status and message a caller sees for `exc`; INTERNAL (without details) for anything unexpected."""
    for cls, code in _CODES:
        if isinstance(exc, cls):
            return code, str(exc)
    return grpc.StatusCode.INTERNAL, "internal error (logged on the server)"


def unary(method: UnaryMethod[Req, Resp]) -> UnaryMethod[Req, Resp]:
    @functools.wraps(method)
    async def wrapper(self: Any, request: Req, context: grpc.aio.ServicerContext) -> Resp:
        started = time.monotonic()
        self.in_flight += 1
        try:
            _admit(self, request)
            response = await method(self, request, context)
        except grpc.aio.AbortError:
            raise  # a status was already set
        except asyncio.CancelledError:  # the client cancelled or its deadline passed
            self.metrics.observe(method.__name__, grpc.StatusCode.CANCELLED, time.monotonic() - started)
            raise
        except Exception as exc:
            await _abort(context, method.__name__, exc, started, self.metrics)
            raise  # unreachable: abort raises
        finally:
            self.in_flight -= 1
        self.metrics.observe(method.__name__, grpc.StatusCode.OK, time.monotonic() - started)
        return response

    return wrapper


def streaming(method: StreamMethod[Req, Resp]) -> StreamMethod[Req, Resp]:
    @functools.wraps(method)
    async def wrapper(self: Any, request: Req, context: grpc.aio.ServicerContext) -> AsyncIterator[Resp]:
        started = time.monotonic()
        self.in_flight += 1
        try:
            _admit(self, request)
            async for message in method(self, request, context):
                yield message
        except grpc.aio.AbortError:
            raise
        except asyncio.CancelledError:
            self.metrics.observe(method.__name__, grpc.StatusCode.CANCELLED, time.monotonic() - started)
            raise
        except Exception as exc:
            await _abort(context, method.__name__, exc, started, self.metrics)
            raise
        finally:
            self.in_flight -= 1
        self.metrics.observe(method.__name__, grpc.StatusCode.OK, time.monotonic() - started)

    return wrapper


async def _abort(context: grpc.aio.ServicerContext, rpc: str, exc: Exception, started: float, metrics: Metrics) -> None:
    if context.cancelled():
        # The caller is gone (its deadline passed, or it cancelled) while this call failed: there is nobody to
        # answer, and aborting a finished call is what once logged an ERROR traceback (issue 8, finding 10).
        metrics.observe(rpc, grpc.StatusCode.CANCELLED, time.monotonic() - started)
        raise asyncio.CancelledError
    code, message = status_of(exc)
    if code is grpc.StatusCode.INTERNAL:
        log.error("%s failed unexpectedly", rpc, exc_info=exc)
    else:
        log.debug("%s: %s: %s", rpc, code.name, message)
    metrics.observe(rpc, code, time.monotonic() - started)
    await context.abort(code, message)
