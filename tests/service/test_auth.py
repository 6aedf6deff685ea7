"""Roles, secure by default (issue 8, build item 3): applications need no credentials; observers read vectors;
administrators change directions and the policy; without an admin token nobody does, unless the server listens on
loopback only with --open-admin. TLS and mutual TLS with certificates made here (openssl)."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from steering_client import AsyncSteeringClient, ablate

from steering_server.service import SteeringServer, Tls
from steering_server.service.auth import Access, is_loopback

from .fake_engine import FakeEngine
from .helpers import expect_status, serving

TOKEN = "s3cret-token"


@pytest.fixture
async def guarded(engine: FakeEngine) -> AsyncIterator[SteeringServer]:
    async with serving(engine, admin_token=TOKEN) as srv:
        yield srv


async def test_admin_rpcs_need_the_token(guarded: SteeringServer, engine: FakeEngine) -> None:
    target = f"127.0.0.1:{guarded.port}"
    async with (
        AsyncSteeringClient(target) as anyone,
        AsyncSteeringClient(target, metadata=[("authorization", "Bearer wrong")]) as wrong,
    ):
        for client in (anyone, wrong):
            await expect_status(client.put_direction("x", vectors={1: [1.0] * 8}), grpc.StatusCode.UNAUTHENTICATED)
            await expect_status(client.delete_direction("misalignment"), grpc.StatusCode.UNAUTHENTICATED)
            await expect_status(client.set_steering([ablate("misalignment")]), grpc.StatusCode.UNAUTHENTICATED)
        assert set(engine.directions) == {"misalignment"} and not engine.policy.terms
        # Applications need no credentials.
        assert (await anyone.generate("Hi", max_new_tokens=3)).token_ids
        assert (await anyone.score("Hi", response="x")).monitor
        assert [d.name for d in (await anyone.list_directions()).directions] == ["misalignment"]
        assert not (await anyone.get_steering()).terms


async def test_the_token_opens_admin_rpcs(guarded: SteeringServer, engine: FakeEngine) -> None:
    async with AsyncSteeringClient(
        f"127.0.0.1:{guarded.port}", metadata=[("authorization", f"Bearer {TOKEN}")]
    ) as admin:
        await admin.put_direction("x", vectors={1: [1.0] * 8})
        await admin.set_steering([ablate("x")])
        await admin.set_steering([])
        await admin.delete_direction("x")
    assert set(engine.directions) == {"misalignment"}


def test_an_empty_token_is_refused() -> None:
    with pytest.raises(ValueError):
        Access(admin_token="")
    with pytest.raises(ValueError):
        Access(observer_token="")


async def test_secure_by_default(engine: FakeEngine) -> None:
    """No admin token and no --open-admin: nobody may change directions or the policy, or read vectors."""
    async with serving(engine, open_admin=False) as srv, AsyncSteeringClient(f"127.0.0.1:{srv.port}") as anyone:
        for call in (
            anyone.put_direction("x", vectors={1: [1.0] * 8}),
            anyone.delete_direction("misalignment"),
            anyone.set_steering([ablate("misalignment")]),
        ):
            details = await expect_status(call, grpc.StatusCode.UNAUTHENTICATED)
            assert "--admin-token-file" in details
        await expect_status(anyone.get_direction("misalignment", include_vectors=True), grpc.StatusCode.UNAUTHENTICATED)
        assert (await anyone.get_direction("misalignment")).name == "misalignment"  # without vectors: anyone
        assert (await anyone.generate("Hi", max_new_tokens=3)).token_ids
    assert set(engine.directions) == {"misalignment"} and not engine.policy.terms


async def test_open_admin_only_on_loopback(engine: FakeEngine) -> None:
    for host in ("0.0.0.0", "192.168.1.5", "::"):
        with pytest.raises(ValueError, match="loopback"):
            SteeringServer(host, 0, open_admin=True)
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and is_loopback("127.3.2.1")


async def test_observers_read_vectors_but_do_not_administer(engine: FakeEngine) -> None:
    async with serving(engine, admin_token=TOKEN, observer_token="watcher") as srv:
        target = f"127.0.0.1:{srv.port}"
        async with (
            AsyncSteeringClient(target, metadata=[("authorization", "Bearer watcher")]) as observer,
            AsyncSteeringClient(target, metadata=[("authorization", f"Bearer {TOKEN}")]) as admin,
            AsyncSteeringClient(target) as anyone,
        ):
            assert (await observer.get_direction("misalignment", include_vectors=True)).vectors
            assert (await admin.get_direction("misalignment", include_vectors=True)).vectors
            await expect_status(
                anyone.get_direction("misalignment", include_vectors=True), grpc.StatusCode.UNAUTHENTICATED
            )
            await expect_status(observer.set_steering([ablate("misalignment")]), grpc.StatusCode.UNAUTHENTICATED)


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _certificates(tmp: Path) -> dict[str, bytes]:
    """A CA, a server certificate for localhost/127.0.0.1 and a client certificate, all signed by the CA."""
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=test-ca",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign", cwd=tmp)
    for name, san in (("server", "DNS:localhost,IP:127.0.0.1"), ("client", "DNS:client")):
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=tmp)
        (tmp / f"{name}.ext").write_text(f"subjectAltName={san}\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.pem", "-days", "1", "-extfile", f"{name}.ext", cwd=tmp)
    return {p.name: p.read_bytes() for p in tmp.iterdir() if p.suffix in (".pem", ".key")}




async def test_tls_and_mutual_tls(engine: FakeEngine, tmp_path: Path) -> None:
    c = _certificates(tmp_path)
    trusted = grpc.ssl_channel_credentials(root_certificates=c["ca.pem"])
    with_cert = grpc.ssl_channel_credentials(c["ca.pem"], c["client.key"], c["client.pem"])

    async def works(port: int, credentials: grpc.ChannelCredentials) -> bool:
        async with grpc.aio.secure_channel(f"localhost:{port}", credentials) as channel:
            try:
                reply = await AsyncSteeringClient(channel=channel, timeout=10).generate("Hi", max_new_tokens=2)
            except grpc.aio.AioRpcError as err:
                assert err.code() == grpc.StatusCode.UNAVAILABLE, err
                return False
            return bool(reply.token_ids)

    async def plaintext_works(port: int) -> bool:
        async with AsyncSteeringClient(f"127.0.0.1:{port}", timeout=10) as client:
            try:
                return bool((await client.generate("Hi", max_new_tokens=2)).token_ids)
            except grpc.aio.AioRpcError as err:
                assert err.code() == grpc.StatusCode.UNAVAILABLE, err
                return False

    async with serving(engine, tls=Tls(c["server.pem"], c["server.key"])) as srv:
        assert await works(srv.port, trusted)
        assert not await plaintext_works(srv.port)
    async with serving(engine, tls=Tls(c["server.pem"], c["server.key"], client_ca=c["ca.pem"])) as srv:
        assert await works(srv.port, with_cert)
        assert not await works(srv.port, trusted)  # no client certificate
        assert not await plaintext_works(srv.port)
