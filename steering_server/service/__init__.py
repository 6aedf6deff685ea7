"""The gRPC edge: the only package that imports grpc or the generated protobuf code.

server.py assembles the grpc.aio server (health, reflection, graceful stop); servicer.py holds one short method
per RPC; decode.py/encode.py convert protobuf to and from the engine's plain types; status.py maps errors to
statuses in one place; auth.py decides roles; metrics.py exports Prometheus metrics.
"""

from .server import SERVICE_NAME, SteeringServer, Tls, serve
from .servicer import SteeringServicer

__all__ = ["SERVICE_NAME", "SteeringServer", "SteeringServicer", "Tls", "serve"]
