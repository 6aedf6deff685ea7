"""The one error mapping: each engine error class has its status; anything else is INTERNAL and logged."""

from __future__ import annotations

import logging

import grpc
import pytest
from steering_client import AsyncSteeringClient

from steering_server.errors import (
    EngineDeadError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnavailableError,
)
from steering_server.service.status import status_of

from .fake_engine import FakeEngine
from .helpers import expect_status


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (InvalidArgumentError("sampling.top_p", "must be in (0, 1]"), grpc.StatusCode.INVALID_ARGUMENT),
        (NotFoundError("direction", "x"), grpc.StatusCode.NOT_FOUND),
        (PermissionDeniedError("no"), grpc.StatusCode.PERMISSION_DENIED),
        (ResourceExhaustedError("full"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (UnavailableError("starting"), grpc.StatusCode.UNAVAILABLE),
        (EngineDeadError("dead"), grpc.StatusCode.UNAVAILABLE),
    ],
)
def test_engine_errors_map_to_their_status(error: Exception, code: grpc.StatusCode) -> None:
    assert status_of(error) == (code, str(error))


def test_field_comes_first_in_invalid_argument_messages() -> None:
    assert (
        status_of(InvalidArgumentError("sampling.top_p", "must be in (0, 1]"))[1] == "sampling.top_p: must be in (0, 1]"
    )
    assert status_of(NotFoundError("direction", "x"))[1] == "direction 'x' not found"


def test_unexpected_errors_are_internal_without_details() -> None:
    code, message = status_of(ValueError("secret internals"))
    assert code == grpc.StatusCode.INTERNAL and "secret" not in message


class _BrokenEngine(FakeEngine):
    def get_policy(self):  # type: ignore[no-untyped-def]
        raise RuntimeError("bug in the policy store")


@pytest.fixture
def engine() -> FakeEngine:
    return _BrokenEngine()


async def test_a_server_bug_is_internal_and_logged_with_its_traceback(
    client: AsyncSteeringClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="steering_server"):
        details = await expect_status(client.get_steering(), grpc.StatusCode.INTERNAL)
    assert "bug in the policy" not in details
    (record,) = [r for r in caplog.records if r.name == "steering_server.service.status"]
    assert record.exc_info is not None and "GetSteering" in record.getMessage()
    assert (await client.generate("Hi", max_new_tokens=2)).token_ids  # still serving
