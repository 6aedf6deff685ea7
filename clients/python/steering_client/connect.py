"""Open a channel the way the `steering-client` command does: credentials (a bearer token), TLS or mutual TLS,
and gRPC's own retry of UNAVAILABLE with waiting for the server to be ready (service config).

    channel = open_channel(Connection("host:50051", token="...", tls_ca="ca.pem"))
    client = SteeringClient(channel=channel, metadata=connection.metadata())
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import grpc

from ._channel import DEFAULT_TARGET, HEALTH_SERVICE, channel_options

__all__ = ["TOKEN_ENV", "Connection", "SettingsError", "open_channel", "read_token", "service_config"]

TOKEN_ENV = "STEERING_TOKEN"  # the token the command sends when neither --token nor --token-file is given


class SettingsError(ValueError):
    """The connection settings cannot work (an unreadable certificate, a key without its certificate)."""


@dataclass(frozen=True)
class Connection:
    target: str = DEFAULT_TARGET
    token: str | None = None  # sent as `authorization: Bearer <token>` (admin or observer, see docs/trust.md)
    tls: bool = False  # TLS with the system's trusted roots (implied by any tls_* file)
    tls_ca: str | None = None  # PEM of the CA that signed the server's certificate
    tls_cert: str | None = None  # mutual TLS: this client's certificate chain (PEM) ...
    tls_key: str | None = None  # ... and its private key
    tls_server_name: str | None = None  # the name the server's certificate must carry, when not the target's host

    @property
    def secure(self) -> bool:
        return self.tls or any((self.tls_ca, self.tls_cert, self.tls_key))

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()


def service_config(wait_for_ready: bool = True, attempts: int = 5, balance: bool = False) -> str:
    """gRPC's service config for SteeringService: calls wait for the channel to be ready (a server restarting
    between two calls is waited for, up to the call's deadline) and a call answered UNAVAILABLE before any response
    arrived (engine starting, server draining) is retried with exponential backoff, 0.2 s doubling up to 2 s.
    `balance`: round robin over every address of the target (`dns:///host:port`), skipping replicas whose gRPC
    health is not SERVING (client-side health checking, deploy/README.md)."""
    method = {
        "name": [{"service": HEALTH_SERVICE}],
        "waitForReady": wait_for_ready,
        "retryPolicy": {
            "maxAttempts": attempts,
            "initialBackoff": "0.2s",
            "maxBackoff": "2s",
            "backoffMultiplier": 2,
            "retryableStatusCodes": ["UNAVAILABLE"],
        },
    }
    config: dict[str, object] = {"methodConfig": [method]}
    if balance:
        config["loadBalancingConfig"] = [{"round_robin": {}}]
        config["healthCheckConfig"] = {"serviceName": HEALTH_SERVICE}
    return json.dumps(config)


def open_channel(connection: Connection, *, wait_for_ready: bool = True, balance: bool = False) -> grpc.Channel:
    """A blocking channel for `connection` (raises SettingsError for settings that cannot work); `balance`: round
    robin over the target's addresses, healthy replicas only (see service_config)."""
    options: list[tuple[str, str | int]] = [
        *channel_options(),
        ("grpc.enable_retries", 1),
        ("grpc.service_config", service_config(wait_for_ready, balance=balance)),
    ]
    if not connection.secure:
        return grpc.insecure_channel(connection.target, options=options)
    if bool(connection.tls_cert) != bool(connection.tls_key):
        raise SettingsError("--tls-cert and --tls-key go together (mutual TLS needs both)")
    credentials = grpc.ssl_channel_credentials(
        root_certificates=_pem(connection.tls_ca, "--tls-ca"),
        private_key=_pem(connection.tls_key, "--tls-key"),
        certificate_chain=_pem(connection.tls_cert, "--tls-cert"),
    )
    if connection.tls_server_name:
        options.append(("grpc.ssl_target_name_override", connection.tls_server_name))
    return grpc.secure_channel(connection.target, credentials, options=options)


def read_token(token: str | None, token_file: str | None) -> str | None:
    """The token: `token`, else the first line of `token_file`, else $STEERING_TOKEN, else None."""
    if token and token_file:
        raise SettingsError("give --token or --token-file, not both")
    if token_file:
        try:
            value = Path(token_file).read_text().strip()
        except OSError as exc:
            raise SettingsError(f"--token-file: cannot read {token_file}: {exc.strerror or exc}") from exc
        if not value:
            raise SettingsError(f"--token-file: {token_file} is empty")
        return value
    return token or os.environ.get(TOKEN_ENV) or None


def _pem(path: str | None, flag: str) -> bytes | None:
    if path is None:
        return None
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise SettingsError(f"{flag}: cannot read {path}: {exc.strerror or exc}") from exc
    if b"-----BEGIN " not in data:
        raise SettingsError(f"{flag}: {path} is not a PEM file (no -----BEGIN line)")
    return data
