"""Python client for steering-server: `SteeringClient` (blocking), `AsyncSteeringClient` (asyncio), the request
builders and the generated messages as `pb` (protos/steering/v1/steering.proto). Needs grpcio and protobuf only."""

from ._proto.steering.v1 import steering_pb2 as pb
from ._proto.steering.v1 import steering_pb2_grpc as pb_grpc
from .aio import AsyncSteeringClient
from .builders import ablate, add, clamp, parse_steering
from .sync import SteeringClient

__all__ = ["AsyncSteeringClient", "SteeringClient", "ablate", "add", "clamp", "parse_steering", "pb", "pb_grpc"]
__version__ = "0.1.0"
