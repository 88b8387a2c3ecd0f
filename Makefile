# keyward developer entry points. `make test` is what CI runs (.ci/run).

SHELL := /bin/bash
GO ?= go
# miekg/pkcs11 is cgo: the PKCS#11 backend does not build without it.
export CGO_ENABLED := 1

# System packages the build and tests need (Debian names). libc6-dev is only a
# Recommends of gcc, and cgo cannot compile without its headers.
DEB_PACKAGES := softhsm2 opensc openssl gcc libc6-dev pkg-config

DEV_DIR := .dev/softhsm

.PHONY: all deps build test lint fmt run dev-token clean

all: build

deps:
	@scripts/ensure-packages.sh $(DEB_PACKAGES)

# cmd/ may not exist yet, or hold no main package: then there is nothing to build.
build:
	@mkdir -p bin
	@if [ -d cmd ] && [ -n "$$($(GO) list -f '{{if eq .Name "main"}}{{.ImportPath}}{{end}}' ./cmd/... 2>/dev/null)" ]; then \
		$(GO) build -o bin/ ./cmd/...; \
	fi

test: deps
	$(GO) vet ./...
	$(GO) test -count=1 -timeout 15m ./...

lint:
	@out=$$(gofmt -l .); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

fmt:
	@gofmt -l -w .

run: deps build
	@$(MAKE) -s dev-token
	./bin/keyward demo --dev-dir $(DEV_DIR)

# A SoftHSM2 token for `make run`, provisioned once and kept in .dev/ (gitignored).
dev-token:
	@if [ ! -f $(DEV_DIR)/pin ]; then \
		softhsm-test/provision-token.sh --dir $(DEV_DIR) --label keyward >/dev/null; \
	fi

clean:
	rm -rf bin .dev
