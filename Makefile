# The README's commands. `make test` is what CI runs (.ci/run).
GO ?= go
BIN := bin

.PHONY: all build test bench fuzz demo clean

all: build

build:
	$(GO) build -o $(BIN)/ ./cmd/...

test:
	./scripts/test

bench: build
	./scripts/bench

demo: build
	$(BIN)/del demo

fuzz:
	./scripts/fuzz

clean:
	rm -rf $(BIN)
