"""Administrator credentials: changing directions or the policy needs a bearer token when the server has one.

Generating, scoring and comparing are for applications and need none (DESIGN.md "Roles"). Without a configured
token every RPC is open, which is only safe on loopback or behind an authenticating proxy.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import grpc.aio

__all__ = ["ADMIN_METHODS", "AdminAuthInterceptor"]

ADMIN_METHODS = frozenset(
    f"/steering.v1.SteeringService/{name}" for name in ("PutDirection", "DeleteDirection", "SetSteering")
)


class AdminAuthInterceptor(grpc.aio.ServerInterceptor):
    """Answers UNAUTHENTICATED to an administrative RPC without `authorization: Bearer <token>`."""

    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("the admin token is empty")
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        if handler_call_details.method not in ADMIN_METHODS or self._authorized(handler_call_details):
            return await continuation(handler_call_details)
        return grpc.unary_unary_rpc_method_handler(_refuse)

    def _authorized(self, details: grpc.HandlerCallDetails) -> bool:
        for key, value in details.invocation_metadata or ():
            if key == "authorization":
                given = value.encode() if isinstance(value, str) else value
                return hmac.compare_digest(given, self._expected)  # constant time
        return False


async def _refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
    await context.abort(
        grpc.StatusCode.UNAUTHENTICATED, "administrator credentials required: send 'authorization: Bearer <token>'"
    )
