# openshell — build, test, bench.
#
#   make run          build everything and run the main job: a command sandboxed by openshell run
#   make test         lint + unit + integration tests (the README's test command; CI runs it)
#   make build        build openshell, openshell-runtime and containerd-shim-openshell-v1 into bin/
#   make runsc        build openshell's runsc into bin/: the pinned gVisor runsc plus its attribution sink (runsc/)
#   make containerd   install the pinned containerd, its runc shim and ctr into bin/ (engine tests)
#   make crictl       build cri-tools' crictl into bin/ (the CRI tests)
#   make dockerd      build moby's dockerd (>= 23, runtimeType) into bin/ (the Docker tests; Debian has 20.10)
#   make critest      build cri-tools' critest and the CNI plugins into bin/ (CRI conformance, per spec vs runc)
#   make install      copy the binaries and runsc to $(PREFIX)/bin
#   make unit         unit tests only
#   make integration  real runsc sandboxes (root; alias: root-test); includes the attack corpus
#   make attack       the attack corpus alone: each escape tried for real on runsc, with its verdict (root)
#   make deps         install the Debian packages the tests use (busybox-static, runc)
#   make bench        Go benchmarks, then whole sandboxes timed against runsc and runc (root)
#   make fuzz         fuzz the policy parser (FUZZTIME=10m)
#   make conformance  runtime-tools' validation programs: bare runsc vs openshell-runtime (root)
#   make gpu-check    CUDA in and out of the sandbox on a GPU host (bring bin/ along; no network needed)
#   make lint         go vet + staticcheck

SHELL         := /bin/bash
GO            ?= go
# go-nvml (linked for CDI generation) declares deprecated NVML calls; cgo would
# print a page of warnings for each of them on every build.
export CGO_CFLAGS ?= -O2 -g -Wno-deprecated-declarations
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
# The shim is its own module, so that containerd's dependencies stay out of
# the runtime's binaries.
CONTAINERD_VERSION := v2.4.2
# crictl drives the CRI tests. The checksum database does not know
# cri-tools v1.34.0 or the cri-api and cri-client release candidates it
# needs, so those three are fetched from the proxy without it.
CRITOOLS_VERSION := v1.34.0
CRI_NOSUMDB   := sigs.k8s.io/cri-tools,k8s.io/cri-client,k8s.io/cri-api
CNI_VERSION   := v1.9.1
# dockerd >= 23 runs runtimes by runtimeType through containerd; Debian 12
# has 20.10, so the tests build moby's dockerd (module github.com/moby/moby/v2).
MOBY_VERSION  := v2.0.0-beta.24
SHIM_TAGS     := no_grpc
PREFIX        ?= /usr/local
UNIT_PKGS      = $(shell $(GO) list ./... | grep -v /integration)
# busybox-static and debootstrap build test images and root filesystems;
# runc is the baseline benchmarks compare to; docker.io is the dockerd
# (20.10) the engine tests start.
DEB_PKGS      := busybox-static debootstrap runc docker.io gcc libc6-dev

.PHONY: attack all run build shim runsc containerd crictl critest cni dockerd install deps conformance gpu-check test unit integration root-test bench fuzz lint clean

all: build runsc

run: build runsc
	$(BIN)/openshell run --policy examples/demo.yaml -- /bin/sh -c '\
	  echo "allowed read:  $$(head -1 /etc/os-release)"; \
	  ls /root >/dev/null 2>&1 || echo "denied read:   /root does not exist in the sandbox"; \
	  touch /usr/openshell-demo 2>/dev/null || echo "denied write:  /usr is read-only"; \
	  echo "kernel:        $$(cat /proc/version)"; \
	  exit 3' < /dev/null; echo "exit code:     $$?"

build: shim
	$(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN)/ ./cmd/...

shim:
	cd shim && $(GO) build -tags $(SHIM_TAGS) -trimpath -ldflags "-s -w" -o $(BIN)/ ./cmd/containerd-shim-openshell-v1

containerd: $(BIN)/containerd

$(BIN)/containerd:
	CGO_ENABLED=0 GOBIN=$(BIN) $(GO) install -trimpath -ldflags "-s -w" -tags "no_btrfs no_devmapper no_zfs" \
	  github.com/containerd/containerd/v2/cmd/containerd@$(CONTAINERD_VERSION) \
	  github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@$(CONTAINERD_VERSION) \
	  github.com/containerd/containerd/v2/cmd/ctr@$(CONTAINERD_VERSION)

crictl: $(BIN)/crictl

$(BIN)/crictl:
	mkdir -p .cache/crictl
	cd .cache/crictl && { [ -f go.mod ] || $(GO) mod init openshell-crictl >/dev/null 2>&1; } && \
	  printf 'package tools\n\nimport _ "sigs.k8s.io/cri-tools/cmd/crictl"\n' > tools.go && \
	  GONOSUMDB=$(CRI_NOSUMDB) GOFLAGS=-mod=mod $(GO) get sigs.k8s.io/cri-tools@$(CRITOOLS_VERSION) && \
	  GONOSUMDB=$(CRI_NOSUMDB) GOFLAGS=-mod=mod CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w" -o $(BIN)/crictl sigs.k8s.io/cri-tools/cmd/crictl

# critest is cri-tools' CRI conformance suite, a test binary; the CNI
# plugins give its pods a bridge network (integration/critest_test.go).
critest: $(BIN)/critest cni

$(BIN)/critest:
	mkdir -p .cache/critest
	cd .cache/critest && { [ -f go.mod ] || $(GO) mod init openshell-critest >/dev/null 2>&1; } && \
	  printf 'package tools\n\nimport _ "sigs.k8s.io/cri-tools/pkg/validate"\n' > tools.go && \
	  GONOSUMDB=$(CRI_NOSUMDB) GOFLAGS=-mod=mod $(GO) get sigs.k8s.io/cri-tools@$(CRITOOLS_VERSION) && \
	  GONOSUMDB=$(CRI_NOSUMDB) GOFLAGS=-mod=mod CGO_ENABLED=0 $(GO) test -c -trimpath -ldflags "-s -w" -o $(BIN)/critest sigs.k8s.io/cri-tools/cmd/critest

cni: $(BIN)/cni/bridge

$(BIN)/cni/bridge:
	mkdir -p .cache/cni $(BIN)/cni
	cd .cache/cni && { [ -f go.mod ] || $(GO) mod init openshell-cni >/dev/null 2>&1; } && \
	  printf 'package tools\n\nimport _ "github.com/containernetworking/plugins/plugins/main/bridge"\n' > tools.go && \
	  GOFLAGS=-mod=mod $(GO) get github.com/containernetworking/plugins@$(CNI_VERSION) && \
	  for p in ipam/host-local main/loopback meta/portmap main/bridge; do \
	    GOFLAGS=-mod=mod CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w" -o $(BIN)/cni/ github.com/containernetworking/plugins/plugins/$$p || exit 1; \
	  done

dockerd: $(BIN)/dockerd

$(BIN)/dockerd:
	mkdir -p .cache/dockerd
	cd .cache/dockerd && { [ -f go.mod ] || $(GO) mod init openshell-dockerd >/dev/null 2>&1; } && \
	  printf 'package tools\n\nimport _ "github.com/moby/moby/v2/cmd/dockerd"\n' > tools.go && \
	  GOFLAGS=-mod=mod $(GO) get github.com/moby/moby/v2@$(MOBY_VERSION) && \
	  GOFLAGS=-mod=mod CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w -X github.com/moby/moby/v2/dockerversion.Version=$(MOBY_VERSION)" \
	    -tags "exclude_graphdriver_btrfs exclude_graphdriver_devicemapper" -o $(BIN)/dockerd github.com/moby/moby/v2/cmd/dockerd

install: build runsc
	install -d $(PREFIX)/bin
	install -m 0755 $(BIN)/openshell $(BIN)/openshell-runtime $(BIN)/containerd-shim-openshell-v1 $(BIN)/runsc $(PREFIX)/bin/

runsc: $(BIN)/runsc

# openshell's runsc: gVisor's runsc at GVISOR_VERSION (runsc/go.mod pins
# the same one) plus the attribution sink per-binary egress rules need.
$(BIN)/runsc: runsc/go.mod runsc/go.sum $(wildcard runsc/*.go runsc/*/*.go)
	cd runsc && CGO_ENABLED=0 $(GO) build -trimpath \
	  -ldflags "-s -w -X gvisor.dev/gvisor/runsc/version.version=$(GVISOR_VERSION)+openshell" \
	  -o $(BIN)/runsc .

deps:
	@missing=$$(for p in $(DEB_PKGS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then echo "missing Debian packages:" $$missing "(apt-get install them as root)"; exit 0; fi; \
	echo "installing" $$missing; \
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null

test: lint unit integration

unit:
	$(GO) test -count=1 $(UNIT_PKGS)
	cd shim && $(GO) test -count=1 -tags $(SHIM_TAGS) ./...
	cd runsc && $(GO) test -count=1 ./...

integration root-test: build runsc containerd crictl critest cni dockerd deps
	OPENSHELL_BIN=$(BIN) OPENSHELL_RUNSC=$(BIN)/runsc $(GO) test -count=1 -v -timeout 60m ./integration/

# The attack corpus (integration/attack*_test.go) also runs in make
# integration; this runs it alone and prints each case's verdict.
attack: build runsc deps
	OPENSHELL_BIN=$(BIN) OPENSHELL_RUNSC=$(BIN)/runsc $(GO) test -count=1 -v -timeout 20m -run '^TestAttack$$' ./integration/

bench: build runsc containerd deps
	$(GO) test -run '^$$' -bench . -benchmem ./policyhook/... ./runtime/inference/
	BIN=$(BIN) test/bench/sandboxes.sh $(BENCH_RUNS)
	OPENSHELL_BENCH=1 BENCH_RUNS=$(BENCH_RUNS) OPENSHELL_BIN=$(BIN) OPENSHELL_RUNSC=$(BIN)/runsc \
	  $(GO) test -count=1 -v -run 'TestCtrStartToExit|TestEgressBench|TestEgressL7Bench|TestEgressTunnelCPU|TestEgressConnectSteps|TestInferenceBench|TestTimelineBench|TestAttributionBench' ./integration/

# On a host with an NVIDIA GPU and PyTorch: CUDA inside and outside the
# sandbox, in one run; a SKIP line elsewhere. It builds nothing, so it runs
# on a GPU host with no network: bring bin/ (make build runsc) along.
gpu-check:
	BIN=$(BIN) test/gpu/check.sh

conformance: build runsc
	BIN=$(BIN) test/runtimetools/run.sh

fuzz:
	$(GO) test -run '^$$' -fuzz FuzzParse -fuzztime $(FUZZTIME) ./policyhook/policy/
	$(GO) test -run '^$$' -fuzz FuzzHostIP -fuzztime $(FUZZTIME) ./policyhook/egress/

lint:
	@bad=$$(gofmt -l . shim runsc); if [ -n "$$bad" ]; then echo "gofmt needed:" $$bad; exit 1; fi
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...
	cd shim && $(GO) vet -tags $(SHIM_TAGS) ./... && $(GO) run $(STATICCHECK) -tags $(SHIM_TAGS) ./...
	cd runsc && $(GO) vet ./... && $(GO) run $(STATICCHECK) ./...

clean:
	rm -rf $(BIN)
