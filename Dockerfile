# syntax=docker/dockerfile:1
# One image for every ClawMesh service:
#   docker build -t clawmesh:0.1.0 .          (or: make image)
#   docker run --rm clawmesh:0.1.0 routing     (the argument names the service: `clawmesh serve routing`)
#
# Stage 1 builds wheels of the project and every dependency; stage 2 installs them into a
# slim Python with no compiler, no pip cache and no build files, and runs as a non-root user.

FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# What setup.py packages (see its ROOTS), plus the metadata files; nothing else is needed.
COPY pyproject.toml setup.py README.md ./
COPY protos/clawmesh protos/clawmesh
COPY services services
COPY shared shared
COPY launcher launcher
COPY loadtest loadtest
# Every dependency ships manylinux wheels for CPython 3.11 (checked on x86_64), so no compiler is
# installed here either: a dependency that ever needs one fails this step, not grows the image.
RUN pip wheel --wheel-dir /wheels .

FROM python:3.11-slim-bookworm
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# A fixed numeric uid/gid, so runAsNonRoot can verify it and fsGroup can match it.
RUN groupadd --system --gid 10001 clawmesh \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin clawmesh \
 && install -d -o 10001 -g 10001 /var/lib/clawmesh
# The wheels are bind-mounted from the build stage, not copied: no layer keeps them.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels clawmesh
WORKDIR /var/lib/clawmesh
# pip compiled every module at install time, so nothing writes .pyc at run time (the root
# filesystem is read-only in Kubernetes); logs unbuffered; the data dir is memory's volume.
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 CLAWMESH_MEMORY__DATA_DIR=/var/lib/clawmesh
USER 10001:10001
# gRPC ports of ingest, routing, provider, memory, metrics; 9464: /metrics when enabled.
EXPOSE 50051 50052 50053 50054 50055 9464
# SIGTERM starts the graceful drain (health NOT_SERVING, in-flight calls finish).
STOPSIGNAL SIGTERM
ENTRYPOINT ["clawmesh", "serve"]
