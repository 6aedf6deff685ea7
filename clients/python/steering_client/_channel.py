"""Channel settings shared by both clients."""

from __future__ import annotations

__all__ = ["DEFAULT_TARGET", "HEALTH_SERVICE", "MAX_MESSAGE_BYTES", "channel_options"]

DEFAULT_TARGET = "127.0.0.1:50051"
HEALTH_SERVICE = "steering.v1.SteeringService"  # the name the server reports health under (also "": the server)
# Direction uploads and per-token score lists can exceed gRPC's 4 MiB default; the server accepts the same.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def channel_options() -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ]
