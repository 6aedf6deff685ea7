"""Engine errors, split by recoverability. The service maps each class to one gRPC status in one place."""

from __future__ import annotations

__all__ = [
    "EngineDeadError",
    "InvalidArgumentError",
    "NotFoundError",
    "PermissionDeniedError",
    "ResourceExhaustedError",
    "SteeringError",
    "UnauthenticatedError",
    "UnavailableError",
]


class SteeringError(Exception):
    """Base class of every error a caller can cause or observe."""


class InvalidArgumentError(SteeringError, ValueError):
    """Bad input; `field` names the offending request field (dotted path)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class NotFoundError(SteeringError, KeyError):
    def __init__(self, what: str, name: str, field: str = "") -> None:
        prefix = f"{field}: " if field else ""
        super().__init__(f"{prefix}{what} {name!r} not found")
        self.what = what
        self.name = name
        self.field = field  # the request field that named it, when there is one

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


class PermissionDeniedError(SteeringError):
    """The request is well-formed but the server's policy forbids it (e.g. inducing misalignment)."""


class UnauthenticatedError(SteeringError):
    """The caller's role may not do this (service side: missing or wrong credentials)."""


class ResourceExhaustedError(SteeringError):
    """The admission queue is full or a request exceeds a size limit; retry later or send less."""


class UnavailableError(SteeringError):
    """The engine is not accepting work (starting, stopping)."""


class EngineDeadError(UnavailableError):
    """The engine's background loop died; every waiting request fails with this and health turns off."""
