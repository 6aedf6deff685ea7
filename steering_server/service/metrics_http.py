"""The metrics port: `GET /metrics` (with prometheus-client's query options, e.g. `?name[]=...`) and nothing else.

prometheus-client's own `start_http_server` answers every path with the metrics, so a load balancer's `/health`
probe on this port read the metrics page as healthy; every other path here answers 404.
"""

from __future__ import annotations

import socket
import threading
from http.server import ThreadingHTTPServer
from urllib.parse import urlparse

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import MetricsHandler

__all__ = ["METRICS_PATH", "MetricsHttpServer"]

METRICS_PATH = "/metrics"


class _Handler(MetricsHandler):
    def do_GET(self) -> None:
        if urlparse(self.path).path != METRICS_PATH:
            body = f"not found: this port serves only {METRICS_PATH}\n".encode()
            self.send_response(404)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        super().do_GET()


class MetricsHttpServer:
    """Serves `registry` on http://host:port/metrics from a daemon thread until `close()`. Port 0 binds a free port
    (read `port`)."""

    def __init__(self, registry: CollectorRegistry, host: str = "127.0.0.1", port: int = 0) -> None:
        handler = type("SteeringMetricsHandler", (_Handler,), {"registry": registry})
        # IPv4 or IPv6, whichever the host names (http.server binds only IPv4 by default).
        family = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
        server = type("_MetricsServer", (ThreadingHTTPServer,), {"address_family": family})
        self._httpd = server((host, port), handler)
        self._httpd.daemon_threads = True
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="steering-metrics", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
