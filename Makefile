# openshell — build, test, bench.
#
#   make run          build everything and run the main job: a command sandboxed by openshell run
#   make test         lint + unit + integration tests (the README's test command; CI runs it)
#   make build        build openshell into bin/
#   make runsc        install the pinned runsc into bin/ (from the Go module proxy)
#   make unit         unit tests only
#   make integration  real runsc sandboxes (root; alias: root-test)
#   make deps         install the Debian packages the tests use (busybox-static, runc)
#   make bench        Go benchmarks, then whole sandboxes timed against runsc and runc (root)
#   make fuzz         fuzz the policy parser (FUZZTIME=10m)
#   make lint         go vet + staticcheck

SHELL         := /bin/bash
GO            ?= go
BIN           := $(CURDIR)/bin
VERSION       ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS       := -X github.com/openshell/openshell/cmd/internal/cli.Version=$(VERSION) \
                 -X github.com/openshell/openshell/cmd/internal/ocicli.Version=$(VERSION)
FUZZTIME      ?= 1m
BENCH_RUNS    ?= 15
# gVisor publishes no tags to the module proxy; this pseudo-version is the
# newest it serves. runsc must be static: a cgo build cannot start sandboxes.
GVISOR_VERSION := v0.0.0-20260905035102-160fafc42237
STATICCHECK   := honnef.co/go/tools/cmd/staticcheck@v0.8.2
UNIT_PKGS      = $(shell $(GO) list ./... | grep -v /integration)
# busybox-static builds test images; runc is the baseline benchmarks compare to.
DEB_PKGS      := busybox-static runc

.PHONY: all run build runsc deps test unit integration root-test bench fuzz lint clean

all: build runsc

run: build runsc
	$(BIN)/openshell run --policy examples/demo.yaml -- /bin/sh -c '\
	  echo "allowed read:  $$(head -1 /etc/os-release)"; \
	  ls /root >/dev/null 2>&1 || echo "denied read:   /root does not exist in the sandbox"; \
	  touch /usr/openshell-demo 2>/dev/null || echo "denied write:  /usr is read-only"; \
	  echo "kernel:        $$(cat /proc/version)"; \
	  exit 3' < /dev/null; echo "exit code:     $$?"

build:
	$(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN)/ ./cmd/...

runsc: $(BIN)/runsc

$(BIN)/runsc:
	CGO_ENABLED=0 GOBIN=$(BIN) $(GO) install -trimpath \
	  -ldflags "-s -w -X gvisor.dev/gvisor/runsc/version.version=$(GVISOR_VERSION)" \
	  gvisor.dev/gvisor/runsc@$(GVISOR_VERSION)

deps:
	@missing=$$(for p in $(DEB_PKGS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then echo "missing Debian packages:" $$missing "(apt-get install them as root)"; exit 0; fi; \
	echo "installing" $$missing; \
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null

test: lint unit integration

unit:
	$(GO) test -count=1 $(UNIT_PKGS)

integration root-test: runsc deps
	OPENSHELL_RUNSC=$(BIN)/runsc $(GO) test -count=1 -v ./integration/

bench: build runsc deps
	$(GO) test -run '^$$' -bench . -benchmem ./policyhook/...
	BIN=$(BIN) test/bench/sandboxes.sh $(BENCH_RUNS)

fuzz:
	$(GO) test -run '^$$' -fuzz FuzzParse -fuzztime $(FUZZTIME) ./policyhook/policy/

lint:
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...

clean:
	rm -rf $(BIN)
