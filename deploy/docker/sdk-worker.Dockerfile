# syntax=docker/dockerfile:1
# The SDK component worker image of deploy/k8s/components/sdk-nats: the
# unmodified stepflow-py[nats]==0.13.0 (the SDK version `make venv`
# installs into .venv-sdk-grpc13 for the tests) and your components. It
# runs the SDK's NATS worker, configured by the Deployment's environment
# (STEPFLOW_TRANSPORT=nats, STEPFLOW_NATS_URL, STEPFLOW_NATS_STREAM,
# STEPFLOW_NATS_CONSUMER, STEPFLOW_BLOB_URL, STEPFLOW_MAX_CONCURRENT).
# Build from the repository root:
#   docker build -f deploy/docker/sdk-worker.Dockerfile -t ghcr.io/stepflow-go/sdk-worker:0.1.0 .
# For your own components, replace deploy/docker/sdk-worker/ (a module
# registering components on the SDK's `server` and calling its `main`),
# add your dependencies to the pip install, and tag the image with your
# registry and version (then set them in `images:` of the base and of
# components/sdk-nats).

FROM python:3.12-slim-bookworm AS venv
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir "stepflow-py[nats]==0.13.0" \
 && /opt/venv/bin/python -c "import stepflow_py.worker.nats_worker"

FROM python:3.12-slim-bookworm
RUN groupadd --gid 65532 nonroot \
 && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin nonroot
COPY --from=venv /opt/venv /opt/venv
COPY deploy/docker/sdk-worker/ /opt/stepflow/components/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /opt/stepflow/components
USER 65532:65532
ENTRYPOINT ["/opt/venv/bin/python", "/opt/stepflow/components/worker.py"]
