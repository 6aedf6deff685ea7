"""steering-server: a gRPC inference server that measures and removes a misalignment direction while it generates."""

__version__ = "0.1.0"
