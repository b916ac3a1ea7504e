# syntax=docker/dockerfile:1
# The worker image without Python: bin/worker (cmd/worker) on distroless,
# as a non-root user. For flows that use only the builtins, MCP servers
# reached over the network, or component servers listed by `url`. Build
# from the repository root:
#   docker build -f deploy/docker/worker.Dockerfile -t ghcr.io/stepflow-go/worker:0.1.0 .
# The manifests in deploy/k8s run worker-python.Dockerfile instead, whose
# component servers live in the same pod.

FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY cmd/ cmd/
COPY pkg/ pkg/
COPY proto/ proto/
RUN CGO_ENABLED=0 GOFLAGS=-buildvcs=false go build -trimpath -ldflags="-s -w" -o /out/worker ./cmd/worker

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/worker /usr/local/bin/worker
USER 65532:65532
EXPOSE 8081
ENTRYPOINT ["/usr/local/bin/worker"]
