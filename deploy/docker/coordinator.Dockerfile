# syntax=docker/dockerfile:1
# The coordinator image: bin/coordinator (cmd/coordinator) on distroless,
# as a non-root user. Build from the repository root:
#   docker build -f deploy/docker/coordinator.Dockerfile -t ghcr.io/stepflow-go/coordinator:0.1.0 .
# Image names and the tag must match deploy/k8s/base/kustomization.yaml
# (`images:`); `make k8s-check` verifies the USER and the names.

FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY cmd/ cmd/
COPY pkg/ pkg/
COPY proto/ proto/
RUN CGO_ENABLED=0 GOFLAGS=-buildvcs=false go build -trimpath -ldflags="-s -w" -o /out/coordinator ./cmd/coordinator

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/coordinator /usr/local/bin/coordinator
# The default data dir (./stepflow-data) is then under nonroot's home,
# which that user can write; in Kubernetes STEPFLOW_DATA_DIR points at a
# volume (a PVC) instead.
WORKDIR /home/nonroot
# 65532 is distroless' "nonroot"; numeric so that the kubelet can check
# runAsNonRoot without reading /etc/passwd.
USER 65532:65532
# The command listens on loopback by default; in a container that is
# unreachable, so the image listens on every interface.
ENV STEPFLOW_HOST=0.0.0.0
EXPOSE 7840
ENTRYPOINT ["/usr/local/bin/coordinator"]
