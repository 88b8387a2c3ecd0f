# keyward developer entry points. `make test` is what CI runs (.ci/run).

SHELL := /bin/bash
GO ?= go
# miekg/pkcs11 is cgo: the PKCS#11 backend does not build without it.
export CGO_ENABLED := 1
# grpcnotrace leaves out golang.org/x/net/trace (and html/template with it),
# which keywardd never uses: 4.5 MB less executable and ~2 MiB less resident
# memory. Exported, so the binaries tests build get it too.
export GOFLAGS := $(strip $(GOFLAGS) -tags=grpcnotrace)

# System packages the build and tests need (Debian names). libc6-dev is only a
# Recommends of gcc, and cgo cannot compile without its headers. libp11-kit-dev:
# the PKCS#11 header the tests build softhsm-test's latency module with.
DEB_PACKAGES := softhsm2 opensc openssl gcc libc6-dev pkg-config systemd swtpm swtpm-tools tpm2-tools libssl-dev libp11-kit-dev
# The Python example (examples/python) runs on Debian's gRPC.
DEB_PACKAGES += python3-grpcio python3-grpc-tools
# The package test renders the man pages.
DEB_PACKAGES += groff-base
# The container image (make image) and its test: podman, with runc (crun
# cannot run containers on hosts with a hybrid cgroup layout).
DEB_PACKAGES += podman runc

DEV_DIR := .dev/softhsm

empty :=
space := $(empty) $(empty)

# The version the binaries report (--version, keyward status, the
# keyward_build_info metric): git's description of the tree, stamped at link
# time. Without git, the binaries fall back to what the Go toolchain recorded.
VERSION ?= $(shell git describe --always --dirty 2>/dev/null)
VERSION_LDFLAGS := $(if $(VERSION),-X github.com/keyward/keyward/internal/version.stamp=$(VERSION))

.PHONY: all deps build test lint fmt run demo bench-audit bench-nethsm latency-module dev-token clean proto deb promtool

all: build

deps:
	@scripts/ensure-packages.sh $(DEB_PACKAGES)
	@# The Node.js example (examples/node): Debian's nodejs and npm, unless a node with npm is installed already.
	@command -v npm >/dev/null || scripts/ensure-packages.sh nodejs npm

# cmd/ may not exist yet, or hold no main package: then there is nothing to build.
# keyward, a client only, is then rebuilt without cgo: a static binary.
build:
	@mkdir -p bin
	@if [ -d cmd ] && [ -n "$$($(GO) list -f '{{if eq .Name "main"}}{{.ImportPath}}{{end}}' ./cmd/... 2>/dev/null)" ]; then \
		$(GO) build -ldflags "$(VERSION_LDFLAGS)" -o bin/ ./cmd/...; \
		CGO_ENABLED=0 $(GO) build -ldflags "$(VERSION_LDFLAGS)" -o bin/ ./cmd/keyward; \
	fi

# promtool for the alerting rules' tests (packaging/prometheus): unpacked from
# Debian's prometheus package into bin/, not installed (scripts/get-promtool.sh says why).
promtool:
	@scripts/get-promtool.sh bin/promtool

# The tpm package runs twice: on swtpm (default build) and, with the tpmsim
# tag, also on the in-process simulator (cgo, libssl-dev).
test: deps promtool
	$(GO) vet ./...
	$(GO) vet -tags tpmsim ./tpm/...
	$(GO) test -count=1 -timeout 15m ./...
	$(GO) test -count=1 -timeout 5m -tags tpmsim -run 'Simulator|Sim' ./tpm/...

lint:
	@out=$$(gofmt -l .); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

fmt:
	@gofmt -l -w .

# Starts keywardd --dev (token kept in .dev/keywardd) and shows wrap/unwrap
# through the socket; on a terminal the daemon stays up until Ctrl-C.
run: deps build
	@scripts/run-dev.sh

# The same round trip directly on a token, without the daemon (keywardd's
# device command: keyward links no backend).
demo: deps build
	@$(MAKE) -s dev-token
	./bin/keywardd demo --dev-dir $(DEV_DIR)

# What the audit log costs: three keywardd (audit off, audit_sync write and
# fsync) driven in turns; ROUNDS, DURATION, CONCURRENCY, BATCH, AUDIT_DIR.
bench-audit: deps build
	@scripts/bench-audit.sh

# keywardd on a network HSM: softhsm-test's latency module (a round trip
# per PKCS#11 call) in front of SoftHSM2, against a raw PKCS#11 loop on the
# same module in the same run; then the same through p11-kit server and
# p11-kit-client.so behind a proxy adding the round trip. DURATION per
# measurement (1s); RTT, the round trip (1ms; 100us to 20ms); STACK, one of
# "latency module" or "p11-kit server" (both when empty); NETHSM_CONFIG:
# top-level config lines for keywardd (e.g. audit_sync = "write").
bench-nethsm: deps
	@case '$(STACK)' in ''|'latency module'|'p11-kit server') ;; *) echo "STACK='$(STACK)': want \"latency module\" or \"p11-kit server\" (both when empty)" >&2; exit 2;; esac
	@scripts/ensure-packages.sh p11-kit p11-kit-modules
	KEYWARD_NETHSM_BENCH=$(or $(DURATION),1s) KEYWARD_NETHSM_RTT='$(RTT)' KEYWARD_NETHSM_CONFIG='$(NETHSM_CONFIG)' $(GO) test -count=1 -timeout 30m -run 'TestNetworkHSMBench/$(subst $(space),_,$(STACK))' -v ./cmd/keywardd/

# softhsm-test's latency module (a network HSM's round trips in front of
# SoftHSM2; softhsm-test/README.md) as bin/libkeyward-latency.so.
latency-module: deps
	@mkdir -p bin
	gcc -Wall -Werror -O2 -shared -fPIC -I/usr/include/p11-kit-1 -o bin/libkeyward-latency.so softhsm-test/latency/latency.c -ldl -lpthread

# A SoftHSM2 token for `make demo`, provisioned once and kept in .dev/ (gitignored).
dev-token:
	@if [ ! -f $(DEV_DIR)/pin ]; then \
		softhsm-test/provision-token.sh --dir $(DEV_DIR) --label keyward >/dev/null; \
	fi

clean:
	rm -rf bin .dev

# Regenerate the API's Go code. Pinned generators: protoc from Debian's
# protobuf-compiler (3.21.12 on Debian 12), protoc-gen-go and
# protoc-gen-go-grpc from the Go module proxy. The output is committed.
PROTOC_GEN_GO_VERSION := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.6.2
PROTO_BIN := $(CURDIR)/bin/proto-tools

.PHONY: proto
proto:
	@scripts/ensure-packages.sh protobuf-compiler
	@GOBIN=$(PROTO_BIN) $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
	@GOBIN=$(PROTO_BIN) $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)
	PATH=$(PROTO_BIN):$$PATH protoc -I api -I /usr/include \
		--go_out=api --go_opt=paths=source_relative \
		--go-grpc_out=api --go-grpc_opt=paths=source_relative \
		api/keyward/v1/keyward.proto

# The Debian package, bin/keyward_$(DEB_VERSION)_$(DEB_ARCH).deb: the three binaries
# (stamped with $(VERSION), git's description of the commit they come from;
# keyward static, without cgo), the systemd units, sysusers.d, tmpfiles.d, the conffile
# /etc/keyward/keyward.toml, the README, the --help texts, the man pages
# keyward(1) and keywardd(8) made from them, the SoftHSM2 provisioning script
# and the drop-in examples (packaging/nfpm.yaml). nfpm is pinned and installed into bin/
# (v2.48.0 does not build from the module proxy). Depends: libc6 at the
# newest symbol version the binaries use.
NFPM_VERSION := v2.44.0
NFPM := $(CURDIR)/bin/nfpm
DEB_VERSION ?= 0.1.0
DEB_ARCH ?= $(shell $(GO) env GOARCH)

deb:
	@if [ "$$($(GO) version -m $(NFPM) 2>/dev/null | awk '$$1 == "mod" { print $$3 }')" != "$(NFPM_VERSION)" ]; then \
		echo "installing nfpm $(NFPM_VERSION) into bin/"; \
		GOBIN=$(CURDIR)/bin $(GO) install github.com/goreleaser/nfpm/v2/cmd/nfpm@$(NFPM_VERSION); \
	fi
	@rm -rf bin/deb && mkdir -p bin/deb/doc
	$(GO) build -trimpath -ldflags "-s -w $(VERSION_LDFLAGS)" -o bin/deb/ ./cmd/keywardd ./cmd/keywardd-admin
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w $(VERSION_LDFLAGS)" -o bin/deb/ ./cmd/keyward
	@bin/deb/keywardd --help > bin/deb/doc/keywardd.txt 2>&1
	@bin/deb/keyward --help > bin/deb/doc/keyward.txt
	@# Man pages from the same help texts (packaging/mangen).
	@set -o pipefail; $(GO) run ./packaging/mangen -bin bin/deb/keyward -section 1 -version $(DEB_VERSION) -commands | gzip -9n > bin/deb/doc/keyward.1.gz
	@set -o pipefail; $(GO) run ./packaging/mangen -bin bin/deb/keywardd -section 8 -version $(DEB_VERSION) -commands | gzip -9n > bin/deb/doc/keywardd.8.gz
	@libc=$$(objdump -T bin/deb/keywardd bin/deb/keywardd-admin | grep -o 'GLIBC_[0-9.]*' | cut -d_ -f2 | sort -uV | tail -n1); \
	test -n "$$libc" || { echo "deb: no glibc symbol versions found" >&2; exit 1; }; \
	DEB_VERSION=$(DEB_VERSION) DEB_ARCH=$(DEB_ARCH) DEB_LIBC=$$libc $(NFPM) package --config packaging/nfpm.yaml --packager deb --target bin/

# The container image for CI: keywardd --dev, keyward and SoftHSM2, built
# from this machine's binaries and Debian packages (no registry needed).
IMAGE ?= localhost/keyward:dev

.PHONY: image
image: deps
	@container/build-image.sh $(IMAGE)

# Fuzzing. Every fuzz target in the repository (`func Fuzz...` in a _test.go
# file, listed by `go test -list`) runs for FUZZTIME, one at a time, so new
# targets are picked up without editing this file. A crasher found is kept
# by go test in that package's testdata/fuzz/<FuzzName>/: commit it, and it
# is a regression seed that every plain `go test` (and `make test`) runs.
# scripts/fuzz.sh runs a target once more when Go's fuzzing coordinator
# fails it on its own deadline with no failing input (go.dev/issue/75804).
FUZZTIME ?= 60s

.PHONY: fuzz reliability
fuzz: deps
	@GO="$(GO)" scripts/fuzz.sh $(FUZZTIME)

# The reliability suite: every fuzz target for FUZZTIME, then the crash
# (100 SIGKILL iterations), token-disruption, hostile-request,
# many-connection, recovery and footprint tests (exec to READY within its
# 150 ms target, memory under load). The last line counts fuzz targets and
# tests (subtests included) passed and failed.
RELIABILITY_TESTS := CrashSafety|CrashDuringChanges|TokenDisruption|Hostile|HalfSentFlood|ConnectionsPerUID|ManyConnections|Recovery|Footprint|ConcurrentKeyChanges|AuditSurvivesKill|KillInFreeSpace
RELIABILITY_PKGS := ./cmd/keywardd ./daemon ./hsm ./tpm ./audit

reliability: deps
	@set -o pipefail; log=$$(mktemp -d); trap 'rm -rf "$$log"' EXIT; start=$$(date +%s); \
	$(MAKE) --no-print-directory fuzz FUZZTIME=$(FUZZTIME) 2>&1 | tee "$$log/fuzz"; fuzzrc=$$?; \
	KEYWARD_CRASH_ITERATIONS=100 KEYWARD_PERF_TARGETS=1 KEYWARD_OBJECT_RACE_DURATION=20s $(GO) test -count=1 -timeout 30m -v -run '$(RELIABILITY_TESTS)' $(RELIABILITY_PKGS) 2>&1 | tee "$$log/test"; testrc=$$?; \
	passed=$$(( $$(grep -c '^fuzz: PASS' "$$log/fuzz") + $$(grep -cE '^ *--- PASS:' "$$log/test") )); \
	failed=$$(( $$(grep -c '^fuzz: FAIL' "$$log/fuzz") + $$(grep -cE '^ *--- FAIL:' "$$log/test") )); \
	if [ $$failed -eq 0 ] && [ $$fuzzrc -ne 0 -o $$testrc -ne 0 ]; then failed=1; fi; \
	grep -E '^(crash-safety|reliability):' "$$log/test" || true; \
	echo "reliability: $$passed passed, $$failed failed ($$(( $$(date +%s) - start ))s)"; \
	[ $$failed -eq 0 ]
