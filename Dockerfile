# syntax=docker/dockerfile:1
# One image for both roles: `kvmworker worker` (per KVM host, a DaemonSet) and `kvmworker bridge` (HTTP).
# See docs/deploy.md for what the worker container needs from the host and why.
#
#   docker build -t kvmworker:0.1.0 .
#
# The builder compiles libvirt-python against libvirt-dev and collects every dependency as a wheel, at
# the versions of requirements.lock, each download checked against the lock's hashes (so the image
# built next month has the versions CI tested; scripts/lock.sh refreshes the lock). The runtime stage
# installs from that wheelhouse only (--no-index), so it needs no compiler and no network, can only
# get the locked versions, and its only extra Debian package is libvirt0, the shared library
# libvirt-python links.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder

# Versions are not pinned: bookworm's point releases replace them (security fixes), so a pin would
# break the build instead of making it reproducible; pin the base image by digest for that.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev libvirt-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY requirements.lock ./
# The locked dependencies as wheels (libvirt-python built from its source here), before the project's
# own files, so that a change in the code does not rebuild them.
RUN pip wheel --no-cache-dir --require-hashes --wheel-dir /wheels -r requirements.lock

COPY pyproject.toml README.md ./
COPY kvmworker ./kvmworker
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .


FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="kvmworker" \
      org.opencontainers.image.description="KVM host agent: worker and HTTP bridge"

# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libvirt0 \
    && rm -rf /var/lib/apt/lists/*

# The bridge runs as this user; the worker's pod overrides it with root (see the Helm chart).
# The default state directory exists and is that user's, so the image also runs as it is.
RUN groupadd --system --gid 10001 kvmworker \
    && useradd --system --uid 10001 --gid kvmworker --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin kvmworker \
    && install -d -o kvmworker -g kvmworker -m 0750 /var/lib/kvmworker

# Installing from a bind mount keeps the wheelhouse out of the image's layers.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --root-user-action=ignore --find-links=/wheels /wheels/kvmworker-*.whl

ENV PYTHONUNBUFFERED=1 \
    KVMWORKER_LOG_JSON=true

USER 10001:10001
ENTRYPOINT ["kvmworker"]
CMD ["--help"]
