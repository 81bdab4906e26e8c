# openshell — build, test, bench.
#
#   make build        build the binaries into bin/
#   make test         lint + unit tests (the README's test command; CI runs it)
#   make unit         unit tests only
#   make bench        Go benchmarks of the policy compiler
#   make fuzz         fuzz the policy parser (FUZZTIME=10m)
#   make lint         go vet + staticcheck

GO          ?= go
BIN         := $(CURDIR)/bin
VERSION     ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS     := -X github.com/openshell/openshell/cmd/internal/cli.Version=$(VERSION)
FUZZTIME    ?= 1m
# Pinned tools, fetched through the Go module proxy.
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2

.PHONY: all build test unit bench fuzz lint clean

all: build

build:
	$(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN)/ ./cmd/...

test: lint unit

unit:
	$(GO) test -count=1 ./...

bench:
	$(GO) test -run '^$$' -bench . -benchmem ./policyhook/...

fuzz:
	$(GO) test -run '^$$' -fuzz FuzzParse -fuzztime $(FUZZTIME) ./policyhook/policy/

lint:
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...

clean:
	rm -rf $(BIN)
