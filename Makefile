# stepflow-go — run `make help` for the targets.

GO        ?= go
BIN       := bin
PKGS      := ./...
RACE      ?= -race
FUZZTIME  ?= 10s
BENCHTIME ?= 1s
# The test targets pipe go test into test/skipcheck and need pipefail.
SHELL     := /bin/bash
# Reads `go test -json`, prints what plain go test prints (ok/FAIL lines,
# failed tests' output) and fails on a skip that is not in
# test/allowed-skips.txt.
SKIPCHECK  = $(GO) run ./test/skipcheck -allow test/allowed-skips.txt
# Tests that -race distorts (heap and allocation figures): they skip under
# -race (listed in test/allowed-skips.txt) and run again without it.
NORACE_TESTS := ./pkg/blob/
NORACE_RUN   := ^(TestSpillHeapPerBlob|TestMemSize)$$

.PHONY: help build check test test-integration bench soak fuzz lint verify demo example clean venv venv-upstream k8s-check

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  %-18s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

build: ## build bin/stepflow, bin/coordinator and bin/worker
	$(GO) build -o $(BIN)/stepflow ./cmd/stepflow
	$(GO) build -o $(BIN)/coordinator ./cmd/coordinator
	$(GO) build -o $(BIN)/worker ./cmd/worker

check: ## fast inner loop, ~50 s cold cache on 2 busy cores: every package's unit tests with -short, no -race (skips multi-process, browser, real SDK/MCP server and slow tests; make test runs them)
	set -o pipefail; $(GO) test -short -json $(PKGS) | $(SKIPCHECK) -short

test: venv mcp-deps ## every test (unit, conformance, real component servers), with the race detector; fails on a skip not in test/allowed-skips.txt
	set -o pipefail; $(GO) test $(RACE) -json -count=1 -timeout 20m $(PKGS) | $(SKIPCHECK)
	set -o pipefail; $(GO) test -json -count=1 -run '$(NORACE_RUN)' $(NORACE_TESTS) | $(GO) run ./test/skipcheck -allow /dev/null

test-integration: venv ## only the multi-process tests in test/integration (part of `make test` too)
	set -o pipefail; $(GO) test $(RACE) -json -count=1 ./test/integration/... | $(SKIPCHECK)

bench: build venv venv-upstream ## benchmarks: Go micro-benchmarks and the end-to-end batch figures (against upstream's server too)
	$(GO) test -run '^$$' -bench . -benchmem -benchtime $(BENCHTIME) ./pkg/value/ ./pkg/expr/ ./pkg/executor/ ./pkg/jsonl/ ./pkg/reorder/ ./pkg/blob/ ./pkg/protocol/ ./pkg/queue/ ./pkg/worker/
	STEPFLOW_BIN=$(CURDIR)/$(BIN)/stepflow STEPFLOW_BIN_DIR=$(CURDIR)/$(BIN) $(GO) test -run '^$$' -bench . -benchtime 1x -timeout 60m ./test/bench/

SOAK ?= 10m
soak: build venv ## a soak (not in CI): batches back to back for $(SOAK) on a 3-node NATS cluster, random kill -9 of workers and NATS nodes, every batch checked
	@mkdir -p test/artifacts
	set -o pipefail; $(GO) test -tags soak -run '^TestSoak$$' -count=1 -timeout 0 -v ./test/integration/ -soak $(SOAK) 2>&1 | tee test/artifacts/soak.log | grep -E 'SOAK|Error|^(---|FAIL|ok|PASS)'
	@echo "full log: test/artifacts/soak.log"

fuzz: ## short fuzz runs of every fuzz target (their corpora: pkg/*/testdata/fuzz/<target>/)
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME) ./pkg/value/
	$(GO) test -run '^$$' -fuzz '^FuzzPath$$' -fuzztime $(FUZZTIME) ./pkg/expr/
	$(GO) test -run '^$$' -fuzz '^FuzzExpr$$' -fuzztime $(FUZZTIME) ./pkg/expr/
	$(GO) test -run '^$$' -fuzz '^FuzzDecode$$' -fuzztime $(FUZZTIME) ./pkg/flow/
	$(GO) test -run '^$$' -fuzz '^FuzzReader$$' -fuzztime $(FUZZTIME) ./pkg/jsonl/
	$(GO) test -run '^$$' -fuzz '^FuzzStdioFraming$$' -fuzztime $(FUZZTIME) ./pkg/protocol/
	$(GO) test -run '^$$' -fuzz '^FuzzSSE$$' -fuzztime $(FUZZTIME) ./pkg/protocol/
	$(GO) test -run '^$$' -fuzz '^FuzzMessage$$' -fuzztime $(FUZZTIME) ./pkg/protocol/
	$(GO) test -run '^$$' -fuzz '^FuzzHTTPResponse$$' -fuzztime $(FUZZTIME) ./pkg/protocol/
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeItem$$' -fuzztime $(FUZZTIME) ./pkg/queue/
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeResult$$' -fuzztime $(FUZZTIME) ./pkg/queue/
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME) ./pkg/config/
	$(GO) test -run '^$$' -fuzz '^FuzzSubstitute$$' -fuzztime $(FUZZTIME) ./pkg/config/
	$(GO) test -run '^$$' -fuzz '^FuzzRouter$$' -fuzztime $(FUZZTIME) ./pkg/plugin/

lint: ## gofmt, go vet and staticcheck
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)
	$(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2 $(PKGS)

verify: lint proto-check ## everything CI checks besides the tests: formatting, vet, staticcheck, tidy go.mod, fresh protobuf code
	$(GO) mod tidy -diff

# deploy/k8s/check is its own Go module (kustomize and k8s.io/api stay out
# of go.mod). It renders every overlay, decodes it strictly, checks it
# against bin/coordinator, bin/worker and deploy/docker, then starts NATS
# (from the overlay's config), the coordinator and a worker as the
# manifests configure them and runs examples/data-pipeline through them.
k8s-check: build venv ## check deploy/k8s: render every overlay, strict API types, flags/env/probes/grace periods/images against the binaries (runs them)
	cd deploy/k8s/check && $(GO) mod tidy -diff && $(GO) vet ./... && $(GO) test -count=1 ./... && $(GO) run . $(CURDIR)

demo: build ## the main job: a coordinator with embedded NATS, two workers, `stepflow submit` of the example batch
	scripts/demo.sh

example: build ## the example batch in-process with `stepflow run` (no coordinator)
	$(BIN)/stepflow run --flow examples/hello/flow.yaml --inputs examples/hello/items.jsonl --max-concurrent 4 --output examples/hello/results.jsonl
	@cat examples/hello/results.jsonl

PYTHON       ?= python3
VENV_HTTP    := .venv-sdk-http
VENV_STDIO   := .venv-sdk-stdio
VENV_HTTP11  := .venv-sdk-http11
VENV_GRPC13  := .venv-sdk-grpc13

# The stepflow-py SDKs the component-server tests drive. Over stdio, 0.7.0
# is the newest release on PyPI with StepflowStdioServer (0.8.0 was never
# published there: `pip index versions stepflow-py`). pip's errors are
# shown; a failed install fails the target.
SDK_HTTP_VERSION  := 0.9.2
SDK_STDIO_VERSION := 0.7.0
# 0.10 and 0.11 speak the protocol of upstream 0.11 (camelCase initialize,
# blobs through the runtime's blob HTTP API instead of callbacks).
SDK_HTTP11_VERSION := 0.11.2
# stepflow-py 0.13 has no HTTP server: its worker pulls tasks over gRPC
# (type: grpc, pkg/plugin/grpcqueue; grpcio comes with the package) or
# fetches them from NATS JetStream (type: nats; the [nats] extra, nats-py).
SDK_GRPC13_VERSION := 0.13.0
PIP_INSTALL        = bin/pip install --quiet --disable-pip-version-check

venv: ## the stepflow-py SDKs the component-server tests drive (0.9.2 and 0.11.2 over HTTP, 0.7.0 over stdio, 0.13.0 over gRPC pull and NATS)
	@if $(VENV_GRPC13)/bin/python -c 'import stepflow_py.worker.grpc_worker, nats' 2>/dev/null; then \
		echo "$(VENV_GRPC13): stepflow-py[nats] $(SDK_GRPC13_VERSION) present"; \
	else \
		echo "$(VENV_GRPC13): installing stepflow-py[nats]==$(SDK_GRPC13_VERSION)"; \
		{ $(PYTHON) -m venv $(VENV_GRPC13) && \
		  $(VENV_GRPC13)/$(PIP_INSTALL) "stepflow-py[nats]==$(SDK_GRPC13_VERSION)" && \
		  $(VENV_GRPC13)/bin/python -c 'import stepflow_py.worker.grpc_worker, nats'; } || \
		{ echo "make venv: stepflow-py[nats]==$(SDK_GRPC13_VERSION) into $(VENV_GRPC13) failed (see the error above)" >&2; exit 1; }; \
	fi
	@if $(VENV_HTTP)/bin/python -c 'import stepflow_py.worker' 2>/dev/null; then \
		echo "$(VENV_HTTP): stepflow-py[http] present"; \
	else \
		echo "$(VENV_HTTP): installing stepflow-py[http]==$(SDK_HTTP_VERSION)"; \
		{ $(PYTHON) -m venv $(VENV_HTTP) && \
		  $(VENV_HTTP)/$(PIP_INSTALL) "stepflow-py[http]==$(SDK_HTTP_VERSION)" && \
		  $(VENV_HTTP)/bin/python -c 'import stepflow_py.worker'; } || \
		{ echo "make venv: stepflow-py[http]==$(SDK_HTTP_VERSION) into $(VENV_HTTP) failed (see the error above)" >&2; exit 1; }; \
	fi
	@if $(VENV_STDIO)/bin/python -c 'from stepflow_py import StepflowStdioServer' 2>/dev/null; then \
		echo "$(VENV_STDIO): stepflow-py (stdio) present"; \
	else \
		echo "$(VENV_STDIO): installing stepflow-py==$(SDK_STDIO_VERSION)"; \
		{ $(PYTHON) -m venv $(VENV_STDIO) && \
		  $(VENV_STDIO)/$(PIP_INSTALL) "stepflow-py==$(SDK_STDIO_VERSION)" && \
		  $(VENV_STDIO)/bin/python -c 'from stepflow_py import StepflowStdioServer'; } || \
		{ echo "make venv: stepflow-py==$(SDK_STDIO_VERSION) into $(VENV_STDIO) failed (see the error above)" >&2; exit 1; }; \
	fi
	@if $(VENV_HTTP11)/bin/python -c 'import stepflow_py.worker.blob_store, fastapi' 2>/dev/null; then \
		echo "$(VENV_HTTP11): stepflow-py[http] $(SDK_HTTP11_VERSION) present"; \
	else \
		echo "$(VENV_HTTP11): installing stepflow-py[http]==$(SDK_HTTP11_VERSION)"; \
		{ $(PYTHON) -m venv $(VENV_HTTP11) && \
		  $(VENV_HTTP11)/$(PIP_INSTALL) "stepflow-py[http]==$(SDK_HTTP11_VERSION)" && \
		  $(VENV_HTTP11)/bin/python -c 'import stepflow_py.worker.blob_store, fastapi'; } || \
		{ echo "make venv: stepflow-py[http]==$(SDK_HTTP11_VERSION) into $(VENV_HTTP11) failed (see the error above)" >&2; exit 1; }; \
	fi

# Upstream Stepflow's own server (stepflow-server, a Rust binary that the
# PyPI package stepflow-orchestrator bundles inside the Python package, not
# in the venv's bin/), for the benchmarks against upstream (test/bench,
# docs/bench-upstream.md). Linked as $(VENV_UPSTREAM)/bin/stepflow-server.
VENV_UPSTREAM := .venv-upstream

venv-upstream: ## upstream Stepflow's server (stepflow-orchestrator 0.9.0 from PyPI) for `make bench`
	@if $(VENV_UPSTREAM)/bin/stepflow-server --help >/dev/null 2>&1; then \
		echo "$(VENV_UPSTREAM): stepflow-server (stepflow-orchestrator) present"; \
	else \
		$(PYTHON) -m venv $(VENV_UPSTREAM) && \
		$(VENV_UPSTREAM)/bin/pip install --quiet --disable-pip-version-check "stepflow-orchestrator==0.9.0" && \
		ln -sf "$$($(VENV_UPSTREAM)/bin/python -c 'import pathlib, stepflow_orchestrator as m; print(pathlib.Path(m.__file__).parent / "bin" / "stepflow-server")')" \
			$(VENV_UPSTREAM)/bin/stepflow-server && \
		$(VENV_UPSTREAM)/bin/stepflow-server --help >/dev/null; \
	fi

clean: ## remove build output
	rm -rf $(BIN) examples/hello/results.jsonl

# --- protobuf wire messages (proto/) ---------------------------------------
# protoc-gen-go is pinned to the google.golang.org/protobuf version in go.mod
# and installed into bin/tools; protoc itself comes from the Debian package
# protobuf-compiler. The generated file records the protoc version in a
# comment, which proto-check ignores so that any protoc 3.x/2x works.
PROTO_FILES    := proto/stepflow/v1/queue.proto
PROTO_GEN_DIR  := proto/stepflowv1
PROTO_TOOLS    := $(CURDIR)/$(BIN)/tools
PROTOC_GEN_GO_VERSION = $(shell $(GO) list -m -f '{{.Version}}' google.golang.org/protobuf)
# Upstream Stepflow 0.13's worker protocol (gRPC services, package
# stepflow.v1) that pkg/plugin/grpcqueue serves; protoc-gen-go-grpc is
# pinned here (its module is versioned apart from google.golang.org/grpc).
GRPC_PROTO_FILES   := proto/stepflow/v1/common.proto proto/stepflow/v1/tasks.proto proto/stepflow/v1/orchestrator.proto proto/stepflow/v1/blobs.proto
GRPC_PROTO_GEN_DIR := proto/tasksv1
PROTOC_GEN_GO_GRPC_VERSION := v1.6.0
PROTOC_GRPC = protoc -I proto --plugin=protoc-gen-go=$(PROTO_TOOLS)/protoc-gen-go \
	  --plugin=protoc-gen-go-grpc=$(PROTO_TOOLS)/protoc-gen-go-grpc

.PHONY: proto proto-check proto-tools

proto-tools:
	@command -v protoc >/dev/null 2>&1 || { echo "protoc not found: install it with 'apt-get install -y protobuf-compiler'" >&2; exit 1; }
	@v=$(PROTOC_GEN_GO_VERSION); [ -n "$$v" ] || { echo "google.golang.org/protobuf is not in go.mod" >&2; exit 1; }; \
	  if [ "$$($(PROTO_TOOLS)/protoc-gen-go --version 2>/dev/null)" != "protoc-gen-go $$v" ]; then \
	    echo "installing protoc-gen-go $$v into $(PROTO_TOOLS)"; \
	    GOBIN=$(PROTO_TOOLS) $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$$v || exit 1; \
	  fi
	@if [ "$$($(PROTO_TOOLS)/protoc-gen-go-grpc --version 2>/dev/null)" != "protoc-gen-go-grpc $(PROTOC_GEN_GO_GRPC_VERSION:v%=%)" ]; then \
	    echo "installing protoc-gen-go-grpc $(PROTOC_GEN_GO_GRPC_VERSION) into $(PROTO_TOOLS)"; \
	    GOBIN=$(PROTO_TOOLS) $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION) || exit 1; \
	  fi

proto: proto-tools ## regenerate the Go code of the protobuf wire messages
	protoc -I proto --plugin=protoc-gen-go=$(PROTO_TOOLS)/protoc-gen-go \
	  --go_out=. --go_opt=module=github.com/stepflow-go/stepflow $(PROTO_FILES)
	$(PROTOC_GRPC) --go_out=. --go_opt=module=github.com/stepflow-go/stepflow \
	  --go-grpc_out=. --go-grpc_opt=module=github.com/stepflow-go/stepflow $(GRPC_PROTO_FILES)

proto-check: proto-tools ## fail if the committed generated protobuf code is stale
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	  protoc -I proto --plugin=protoc-gen-go=$(PROTO_TOOLS)/protoc-gen-go \
	    --go_out=$$tmp --go_opt=module=github.com/stepflow-go/stepflow $(PROTO_FILES) && \
	  if ! diff -r -u -I '^//[[:space:]]*protoc[[:space:]]' $$tmp/$(PROTO_GEN_DIR) $(PROTO_GEN_DIR); then \
	    echo "generated protobuf code in $(PROTO_GEN_DIR) is stale: run 'make proto' and commit the result" >&2; exit 1; \
	  fi; echo "proto: $(PROTO_GEN_DIR) is up to date"
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	  $(PROTOC_GRPC) --go_out=$$tmp --go_opt=module=github.com/stepflow-go/stepflow \
	    --go-grpc_out=$$tmp --go-grpc_opt=module=github.com/stepflow-go/stepflow $(GRPC_PROTO_FILES) && \
	  if ! diff -r -u -I '^//[[:space:]]*-\{0,1\}[[:space:]]*protoc[[:space:]]' $$tmp/$(GRPC_PROTO_GEN_DIR) $(GRPC_PROTO_GEN_DIR); then \
	    echo "generated protobuf code in $(GRPC_PROTO_GEN_DIR) is stale: run 'make proto' and commit the result" >&2; exit 1; \
	  fi; echo "proto: $(GRPC_PROTO_GEN_DIR) is up to date"

# --- MCP test server (test/mcp) ---------------------------------------------
# pkg/plugin/mcp tests run @modelcontextprotocol/server-everything, pinned in
# test/mcp/package.json and package-lock.json; they fail until it is installed.
.PHONY: mcp-deps

mcp-deps: test/mcp/node_modules/.installed ## install the MCP test server from npm

test/mcp/node_modules/.installed: test/mcp/package.json test/mcp/package-lock.json
	npm ci --prefix test/mcp --no-audit --no-fund
	touch $@
