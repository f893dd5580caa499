# fcmesh: the commands the README documents.
SHELL := /bin/bash
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: demo test bench deps build lint fmt clean check-cuda

## demo: build, then run every service in one process on the embedded bus with one pipeline run
demo: build
	./target/debug/fcmesh demo

## test: every test (unit, golden, conformance on both bus backends, service processes)
test: deps
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace --lib --bins --tests

## bench: benchmarks with their peers side by side in the same run (bus, rewards, SFT step, engine)
bench: deps
	bash scripts/bench/run_all.sh

build:
	$(CARGO) build -p fcmesh

## check-cuda: compile and lint the `cuda` feature (needs nvcc, no GPU; installs Debian's toolkit as root)
check-cuda:
	bash scripts/cuda.sh check

## deps: system packages the tests need (nats-server, redis-server); installs them when root
deps:
	@missing=""; \
	for b in nats-server redis-server; do \
	  command -v $$b >/dev/null 2>&1 || [ -x /usr/sbin/$$b ] || [ -x /usr/bin/$$b ] || missing="$$missing $$b"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing:$$missing"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else \
	    echo "missing:$$missing. Install them (Debian: sudo apt-get install -y$$missing)"; exit 1; \
	  fi; \
	fi

lint:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
	rm -rf .fcmesh
