"""The one place where errors become HTTP statuses and OpenAI-shaped error bodies.

`{"error": {"message", "type", "param", "code"}}` as OpenAI answers; the message starts with the field, named as
the HTTP body names it (`temperature`, not the engine's `sampling.temperature`), and `param` is that field.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from ..errors import (
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    SteeringError,
    UnauthenticatedError,
    UnavailableError,
)

__all__ = ["error_body", "http_error", "http_field"]

log = logging.getLogger(__name__)

# (class, HTTP status, OpenAI error type, code): the first match wins.
_STATUSES: tuple[tuple[type[SteeringError], int, str, str], ...] = (
    (InvalidArgumentError, 400, "invalid_request_error", "invalid_argument"),
    (UnauthenticatedError, 401, "authentication_error", "unauthenticated"),
    (PermissionDeniedError, 403, "permission_error", "permission_denied"),
    (NotFoundError, 404, "not_found_error", "not_found"),
    (ResourceExhaustedError, 429, "rate_limit_error", "resource_exhausted"),
    (UnavailableError, 503, "service_unavailable_error", "unavailable"),  # EngineDeadError included
)

# The engine names sampling fields after its own request; the HTTP body uses OpenAI's names.
_RENAMES = (("sampling.max_new_tokens", "max_tokens"), ("sampling.", ""), ("prompt_token_ids", "prompt"))


_FIELD_FIRST = re.compile(r"^([A-Za-z_][\w.\[\]]*): ")  # "steering[0]: ..." names its field first


def http_field(field: str) -> str:
    """The engine's field path as the HTTP body spells it."""
    for old, new in _RENAMES:
        if field.startswith(old):
            return new + field[len(old) :]
    return field


def error_body(message: str, kind: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def http_error(exc: BaseException) -> tuple[int, dict[str, Any]]:
    """The status and body a caller sees for `exc`; 500 without details for anything unexpected (logged)."""
    for cls, status, kind, code in _STATUSES:
        if isinstance(exc, cls):
            param: str | None = None
            message = str(exc)
            if isinstance(exc, InvalidArgumentError):
                param = http_field(exc.field)
                message = f"{param}: {exc.message}"
            elif isinstance(exc, NotFoundError) and exc.field:
                param = http_field(exc.field)
                message = f"{param}: {exc.what} {exc.name!r} not found"
            elif match := _FIELD_FIRST.match(message):
                param = match.group(1)
            return status, error_body(message, kind, param, code)
    log.error("HTTP request failed unexpectedly", exc_info=exc)
    return 500, error_body("internal error (logged on the server)", "server_error", None, "internal")
