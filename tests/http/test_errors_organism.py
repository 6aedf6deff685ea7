"""The same bad requests against the real engine on the built-in organism: the same statuses and fields."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio

from ..service.helpers import assert_no_unexpected_errors
from .bad_requests import BAD_REQUESTS, HI, BadRequest, check_refused
from .conftest import Served

pytestmark = pytest.mark.asyncio(loop_scope="package")


@pytest_asyncio.fixture(loop_scope="package")
async def http(organism: Served) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=organism.url, timeout=120) as client:
        yield client


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=lambda c: c.name)
async def test_a_bad_request_gets_its_status_and_names_the_field(
    http: httpx.AsyncClient, case: BadRequest, caplog: pytest.LogCaptureFixture
) -> None:
    await check_refused(http, case)
    assert_no_unexpected_errors(caplog)


async def test_the_server_still_answers_after_the_bad_requests(http: httpx.AsyncClient) -> None:
    reply = await http.post("/v1/chat/completions", json={"messages": HI, "max_tokens": 3, "temperature": 0})
    assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] >= 1
