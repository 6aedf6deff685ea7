# steering-server in a container, installed by the same command as the README (scripts/setup.sh).
#
#   docker build -t steering-server .                     # CPU (default): python:3.11-slim + torch 2.13.0 CPU build
#   docker build -t steering-server:cuda \
#     --build-arg BASE=pytorch/pytorch:2.6.0-cuda12.4-cudnn9-runtime .   # CUDA: a base image that ships torch
#
# With a CUDA base image, setup.sh finds the image's torch and keeps it (the venv sees system site packages): the
# CUDA build is never replaced by a CPU wheel. Pick a tag whose torch meets pyproject.toml's floor (torch>=2.6) and
# your driver's CUDA. Running several replicas: deploy/README.md. (Never built on the machines this was written
# on: they cannot run Docker.)
ARG BASE=python:3.11-slim
FROM ${BASE}

# No .pyc files written at run time; logs unbuffered (one JSON object per line with --log-format json).
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY scripts ./scripts
COPY protos ./protos
COPY clients ./clients
COPY steering_server ./steering_server
# The README's install command (tests/test_packaging.py checks that they stay the same).
RUN bash scripts/setup.sh
ENV PATH=/app/.venv/bin:$PATH

# The state directory (uploaded directions, the policy): a volume, shared by replicas (deploy/README.md).
VOLUME /state
EXPOSE 50051
# gRPC health through the client CLI: exit 0 only when SERVING (the canary passed and the engine is alive).
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
  CMD steering-client --connect-timeout 3 --timeout 3 health || exit 1
ENTRYPOINT ["steering-server", "--log-format", "json"]
# Listens on every interface, so the admin RPCs need a token: mount one at /run/secrets/admin_token (a missing
# file stops the start with one `cannot start` line). Add e.g. --model /models/NAME, --device cuda, --tls-*.
CMD ["serve", "--host", "0.0.0.0", "--port", "50051", "--state-dir", "/state", \
     "--admin-token-file", "/run/secrets/admin_token"]
