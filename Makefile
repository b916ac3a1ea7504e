# stepflow-go — run `make help` for the targets.

GO        ?= go
BIN       := bin
PKGS      := ./...
RACE      ?= -race
FUZZTIME  ?= 10s
BENCHTIME ?= 1s

.PHONY: help build test test-integration bench fuzz lint verify demo clean

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-18s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

build: ## build bin/stepflow
	$(GO) build -o $(BIN)/stepflow ./cmd/stepflow

test: ## unit tests and the upstream conformance flows, with the race detector
	$(GO) test $(RACE) -count=1 $(PKGS)

test-integration: build ## multi-process tests in test/integration
	$(GO) test $(RACE) -count=1 -tags integration ./test/integration/...

bench: build ## benchmarks: Go micro-benchmarks and the end-to-end batch figures
	$(GO) test -run '^$$' -bench . -benchmem -benchtime $(BENCHTIME) ./pkg/value/ ./pkg/expr/ ./pkg/executor/ ./pkg/jsonl/ ./pkg/reorder/ ./pkg/blob/
	STEPFLOW_BIN=$(CURDIR)/$(BIN)/stepflow $(GO) test -run '^$$' -bench . -benchtime 1x -timeout 30m ./test/bench/

fuzz: ## short fuzz runs of every fuzz target
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME) ./pkg/value/
	$(GO) test -run '^$$' -fuzz '^FuzzPath$$' -fuzztime $(FUZZTIME) ./pkg/expr/
	$(GO) test -run '^$$' -fuzz '^FuzzExpr$$' -fuzztime $(FUZZTIME) ./pkg/expr/
	$(GO) test -run '^$$' -fuzz '^FuzzDecode$$' -fuzztime $(FUZZTIME) ./pkg/flow/
	$(GO) test -run '^$$' -fuzz '^FuzzReader$$' -fuzztime $(FUZZTIME) ./pkg/jsonl/

lint: ## gofmt, go vet and staticcheck
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)
	$(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2 $(PKGS)

verify: lint ## everything CI checks besides the tests: formatting, vet, staticcheck, tidy go.mod
	$(GO) mod tidy -diff

demo: build ## run the example batch on this machine (local, embedded engine)
	$(BIN)/stepflow run --flow examples/hello/flow.yaml --inputs examples/hello/items.jsonl --max-concurrent 4 --output examples/hello/results.jsonl
	@cat examples/hello/results.jsonl

clean: ## remove build output
	rm -rf $(BIN) examples/hello/results.jsonl
