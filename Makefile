# The README's commands. `make test` is what CI runs (.ci/run).
GO ?= $(shell command -v go 2>/dev/null || echo /usr/local/go/bin/go)
BIN := bin

.PHONY: all build test bench fuzz demo clean

all: build

build:
	$(GO) build -o $(BIN)/ ./cmd/...

# Installs what the tests need (Debian packages, Go modules), then runs every
# test with DEL_REQUIRE_ALL=1.
test:
	./scripts/test

# Every benchmark, each beside its reference measured in the same run.
bench: build
	./scripts/bench

# DEL's main job on this machine, no set-up: two devices, one transfer.
demo: build
	$(BIN)/del demo

# A short coverage-guided run of every fuzz target (the seeds run in `make test`).
fuzz:
	./scripts/fuzz

clean:
	rm -rf $(BIN)
