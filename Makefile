# The two commands a newcomer needs are `make run` and `make test`; both set
# everything up on a fresh machine first.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
BUF := .tools/node_modules/.bin/buf
# The Node client test (tests/e2e/test_grpc_js.py) loads protos/ at run time
# with these; grpc-js's package.json stands for both.
NODE_GRPC := .tools/node_modules/@grpc/grpc-js/package.json
PROTOS := $(wildcard protos/faregate/v1/*.proto)
CONFIG ?=

.PHONY: run test gen check-gen lint typecheck buf-lint buf-breaking bench setup tools clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# The client is a distribution of its own (client/pyproject.toml) that the
# server depends on: both go in one pip run, so pip takes it from ./client.
# An installed faregate is removed first: in a .venv made before the client
# had a distribution of its own, faregate owns the faregate-client script, and
# pip would delete it with that faregate after installing the client's own.
$(VENV)/.installed: $(BIN)/python pyproject.toml client/pyproject.toml
	if $(BIN)/pip show --quiet faregate >/dev/null 2>&1; then \
	  $(BIN)/pip uninstall --quiet --yes faregate; fi
	$(BIN)/pip install --quiet -e ./client -e '.[dev]'
	touch $@

$(BUF):
	npm install --prefix .tools --no-audit --no-fund --silent @bufbuild/buf

setup: $(VENV)/.installed

$(NODE_GRPC):
	npm install --prefix .tools --no-audit --no-fund --silent @grpc/grpc-js @grpc/proto-loader

tools: $(BUF) $(NODE_GRPC)

## Start faregate on the embedded default config (or CONFIG=path/to.yaml).
run: setup
	$(BIN)/faregate serve $(if $(CONFIG),--config $(CONFIG))

## Lint, check the generated code, and run the whole test suite.
test: setup tools buf-lint check-gen lint typecheck
	$(BIN)/pytest

## Regenerate the committed Python stubs from protos/.
gen: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m grpc_tools.protoc -Iprotos \
	  --python_out=client --grpc_python_out=client \
	  --mypy_out=client --mypy_grpc_out=client $(PROTOS)

check-gen: gen
	@git diff --exit-code -- client/faregate/v1 \
	  || (echo "generated stubs are stale: run 'make gen' and commit" && exit 1)

buf-lint: tools
	$(BUF) lint

## Compare the contract with the one before the latest commit that changed it.
buf-breaking: tools
	@previous=$$(git log -n 2 --format=%H -- protos | sed -n 2p); \
	if [ -n "$$previous" ]; then \
	  $(BUF) breaking --against ".git#ref=$$previous" \
	    && echo "buf breaking: no breaking change against $$previous"; \
	else echo "buf breaking: no earlier contract to compare with"; fi

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy

## Measure faregate beside a bare grpc.aio pass-through (not a test).
bench: setup
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .tools build *.egg-info client/build client/*.egg-info
