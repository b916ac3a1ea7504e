# syntax=docker/dockerfile:1
# The worker image with Python: bin/worker (cmd/worker) plus a virtual
# environment with stepflow-py[http]==0.9.2 (the SDK version `make venv`
# installs for the tests) and the example component server of
# examples/data-pipeline. The worker starts the component servers itself,
# as subprocesses, from the stepflow-config.yml that Kubernetes mounts
# from a ConfigMap (deploy/k8s/base/worker/stepflow-config.yml). Build
# from the repository root:
#   docker build -f deploy/docker/worker-python.Dockerfile -t ghcr.io/stepflow-go/worker-python:0.1.0 .
# For your own components, copy your server files the same way (or
# derive an image FROM this one) and route to them in the ConfigMap.

FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY cmd/ cmd/
COPY pkg/ pkg/
COPY proto/ proto/
RUN CGO_ENABLED=0 GOFLAGS=-buildvcs=false go build -trimpath -ldflags="-s -w" -o /out/worker ./cmd/worker

# The venv is built in its own stage so that pip's caches and build
# tools stay out of the runtime image.
FROM python:3.12-slim-bookworm AS venv
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir "stepflow-py[http]==0.9.2" \
 && /opt/venv/bin/python -c "import stepflow_py.worker"

FROM python:3.12-slim-bookworm
# tini as PID 1 forwards SIGTERM to the worker only (not to its process
# group): the component servers must keep serving while the worker
# drains its in-flight items; the worker stops them afterwards.
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 65532 nonroot \
 && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin nonroot
COPY --from=venv /opt/venv /opt/venv
COPY --from=build /out/worker /usr/local/bin/worker
COPY examples/data-pipeline/ /opt/stepflow/examples/data-pipeline/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /opt/stepflow
USER 65532:65532
EXPOSE 8081
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/worker"]
