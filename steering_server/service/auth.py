"""Roles (DESIGN.md "Roles", "Trust model"): applications, observers, administrators. Secure by default.

    application    Generate, GenerateStream, Compare, Score, ListDirections, GetDirection (no vectors), GetSteering,
                   ModelInfo, Tokenize: no credentials
    observer       also reads vectors (GetDirection include_vectors) and watches all traffic (WatchMonitor):
                   `authorization: Bearer <observer or admin token>`
    administrator  PutDirection, DeleteDirection, SetSteering, ComputeDirection: `authorization: Bearer <admin token>`

Without an admin token the administrative RPCs are refused (UNAUTHENTICATED), unless the server listens on loopback
only and was started with --open-admin, which opens every role to every local caller (tests, a laptop).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio

from ..errors import UnauthenticatedError

__all__ = ["ADMIN_METHODS", "OBSERVER_METHODS", "Access", "AuthInterceptor", "is_loopback"]

ADMIN_METHODS = frozenset(
    f"/steering.v1.SteeringService/{name}"
    for name in ("PutDirection", "DeleteDirection", "SetSteering", "ComputeDirection")
)
# Whole methods for observers (server-streaming ones: refused before anything is streamed). GetDirection is gated
# by its include_vectors field, in the servicer.
OBSERVER_METHODS = frozenset(f"/steering.v1.SteeringService/{name}" for name in ("WatchMonitor",))


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Access:
    """Who may do what. Tokens are compared in constant time against the first `authorization` header."""

    admin_token: str | None = None
    observer_token: str | None = None
    open_admin: bool = False  # every role for every caller: loopback-only servers (checked by SteeringServer)

    def __post_init__(self) -> None:
        for name in ("admin_token", "observer_token"):
            if getattr(self, name) == "":
                raise ValueError(f"the {name.replace('_', ' ')} is empty")

    def check_admin(self, metadata: Sequence[tuple[str, Any]] | None) -> None:
        if self.open_admin or self._holds(metadata, self.admin_token):
            return
        if self.admin_token is None:
            raise UnauthenticatedError(
                "administrative RPCs are disabled: start the server with --admin-token-file, or with --open-admin "
                "on a loopback-only address"
            )
        raise UnauthenticatedError("administrator credentials required: send 'authorization: Bearer <token>'")

    def check_observer(self, metadata: Sequence[tuple[str, Any]] | None) -> None:
        if self.open_admin or self._holds(metadata, self.admin_token) or self._holds(metadata, self.observer_token):
            return
        raise UnauthenticatedError(
            "reading vectors and watching traffic need observer or administrator credentials: send "
            "'authorization: Bearer <token>'"
        )

    def identify(self, metadata: Sequence[tuple[str, Any]] | None) -> dict[str, str]:
        """Who a caller is, for the audit log: the role its credentials give and which token it sent, as a
        fingerprint (the first 12 hex digits of the token's SHA-256), never the token itself."""
        for role, token in (("admin", self.admin_token), ("observer", self.observer_token)):
            if token is not None and self._holds(metadata, token):
                return {"role": role, "token": "sha256:" + hashlib.sha256(token.encode()).hexdigest()[:12]}
        return {"role": "open-admin" if self.open_admin else "anonymous"}

    @staticmethod
    def _holds(metadata: Sequence[tuple[str, Any]] | None, token: str | None) -> bool:
        if token is None:
            return False
        for key, value in metadata or ():
            if key == "authorization":
                given = value.encode() if isinstance(value, str) else bytes(value)
                return hmac.compare_digest(given, f"Bearer {token}".encode())  # constant time
        return False


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Answers UNAUTHENTICATED to an administrative RPC its caller may not make (before the body is parsed)."""

    def __init__(self, access: Access) -> None:
        self._access = access

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = handler_call_details.method
        if method in ADMIN_METHODS or method in OBSERVER_METHODS:
            check = self._access.check_admin if method in ADMIN_METHODS else self._access.check_observer
            try:
                check(handler_call_details.invocation_metadata)
            except UnauthenticatedError as exc:
                message = str(exc)

                async def refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
                    await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

                if method in OBSERVER_METHODS:  # server-streaming
                    return grpc.unary_stream_rpc_method_handler(refuse)
                return grpc.unary_unary_rpc_method_handler(refuse)
        return await continuation(handler_call_details)
