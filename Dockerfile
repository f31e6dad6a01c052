# syntax=docker/dockerfile:1.7
# pipecat-base: the image Pipecat voice agents build FROM. See README, "Container image".
#
# Layout: the server runs from its own environment, /opt/pipecat-base/.venv, which nothing the
# agent does touches. The agent's dependencies go into /app/.venv (its `uv sync` or
# `pip install -r requirements.txt`); at startup the server puts that environment first on
# sys.path (pipecat_base/bot_env.py), so an agent's sync, which removes whatever its lock does
# not list, can never uninstall the server.
#
# BASE_IMAGE is any Debian-based image with Python and uv on PATH: the uv image by default (what
# the publish workflow builds on); scripts/test-image builds on a local Debian rootfs instead,
# since upstream images cannot be pulled there.
ARG PYTHON_VERSION=3.12
ARG BASE_IMAGE=ghcr.io/astral-sh/uv:python${PYTHON_VERSION}-bookworm-slim
FROM ${BASE_IMAGE}

# Run-time libraries voice agents need (resampling, BLAS for numpy/onnx, OpenCV's GL and
# GLib), and tini, so Python is not PID 1. Versions are not pinned on purpose: a rebuild of the
# base picks up Debian's security fixes.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        ca-certificates libopenblas-dev libresample1 libresample-dev libgl1 libglib2.0-0 tini \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/*

# SSL_CERT_FILE: uv (and the agent's builds FROM this image) trust the OS store instead of uv's
# built-in roots, so a CA added to the image, or a build host's bundle mounted over it (a
# corporate proxy; scripts/test-image), is honoured.
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt

# The runtime: dependencies first (cached while only our code changes), then the project.
WORKDIR /opt/pipecat-base
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=bind,source=uv.lock,target=/opt/pipecat-base/uv.lock \
    --mount=type=bind,source=pyproject.toml,target=/opt/pipecat-base/pyproject.toml \
    UV_PROJECT_ENVIRONMENT=/opt/pipecat-base/.venv \
    uv sync --locked --no-install-project --no-dev
COPY pyproject.toml uv.lock README.md ./
COPY pipecat_base ./pipecat_base
COPY pipecatcloud_system ./pipecatcloud_system
RUN --mount=type=cache,target=/root/.cache/uv \
    UV_PROJECT_ENVIRONMENT=/opt/pipecat-base/.venv \
    uv sync --locked --no-dev --no-editable

# The agent's environment, empty until the agent's own image fills it.
WORKDIR /app
RUN uv venv --seed /app/.venv
ENV VIRTUAL_ENV=/app/.venv \
    UV_PROJECT_ENVIRONMENT=/app/.venv \
    PIPECAT_BOT_VENV=/app/.venv \
    PATH="/app/.venv/bin:/opt/pipecat-base/.venv/bin:$PATH"

ENTRYPOINT ["/usr/bin/tini", "-e", "143", "--"]

ARG VERSION=0.0.0
ENV IMAGE_VERSION=${VERSION}
LABEL daily.co/pipecat-cloud-base-version="${VERSION}" \
      org.opencontainers.image.title="pipecat-base" \
      org.opencontainers.image.description="Trio runtime for Pipecat voice-agent containers" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="BSD-2-Clause" \
      org.opencontainers.image.source="https://github.com/pipecat-ai/pipecat-base"

# An optional /app/pre-app.sh runs first (a failing hook stops the start); then the server
# replaces the shell, so tini's SIGTERM reaches it directly.
CMD ["sh", "-c", "if [ -f /app/pre-app.sh ]; then sh /app/pre-app.sh; fi && exec /opt/pipecat-base/.venv/bin/pipecat-base serve /app/bot.py"]
