"""The OpenAI-compatible HTTP API and the compare-and-watch web page, served beside gRPC on the same engine.

Only the serving edge imports this package (`steering_server.service.server` when `--http-port` is given); the
engine never does. docs/http.md has the field mapping and the error table.
"""

from .app import create_app
from .server import HttpServer

__all__ = ["HttpServer", "create_app"]
