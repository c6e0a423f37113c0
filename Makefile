# netbootd: make demo | make test | make lint | make setup
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The modules setup.py compiles with mypyc ([tool.netbootd] in pyproject.toml): an edit to one
# rebuilds them.
COMPILED := $(shell $(PYTHON) -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["tool"]["netbootd"]["compiled"])')

.PHONY: setup system venv demo test test-python test-unit test-integration test-e2e lint clean bench-tftp bench-http bench-dhcp bench-dhcp-flood fuzz-dhcp

setup: system venv

system:
	@tools/setup-system.sh

venv: $(STAMP)

$(STAMP): pyproject.toml setup.py $(COMPILED)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,demo]'
	@touch $(STAMP)

demo: setup
	PYTHONPATH=lab $(BIN)/python -m netbootd_lab.demo

lint: venv
	$(BIN)/ruff check src tests lab bench setup.py
	$(BIN)/ruff format --check src tests lab bench setup.py
	$(BIN)/mypy

test: setup lint
	NETBOOTD_NO_SKIPS=1 NETBOOTD_EXPECT_COMPILED=1 $(BIN)/pytest tests
	$(MAKE) --no-print-directory test-python

# The unit and fuzz tests once more on the Python source, as NETBOOTD_COMPILE=0 installs it.
test-python: venv
	rm -rf build/python-src && mkdir -p build/python-src
	cp -r src/netbootd build/python-src/ && find build/python-src -name '*.so' -delete
	PYTHONPATH=build/python-src NETBOOTD_EXPECT_COMPILED=0 $(BIN)/pytest -q -p no:cacheprovider tests/unit tests/fuzz

test-unit: venv
	$(BIN)/pytest tests/unit

test-integration: setup
	$(BIN)/pytest tests/integration

test-e2e: setup
	$(BIN)/pytest tests/e2e

# Benchmarks print their figures against a peer measured in the same run.
bench-tftp: venv
	@EXTRA_PACKAGES=atftpd tools/setup-system.sh
	PYTHONPATH=lab $(BIN)/python bench/tftp.py

bench-http: venv
	@EXTRA_PACKAGES=nginx tools/setup-system.sh
	PYTHONPATH=lab $(BIN)/python bench/http_bench.py

bench-dhcp: venv
	@EXTRA_PACKAGES="kea-dhcp4-server kea-admin" tools/setup-system.sh
	PYTHONPATH=lab $(BIN)/python bench/dhcp_bench.py

bench-dhcp-flood: venv
	@EXTRA_PACKAGES=kea-dhcp4-server tools/setup-system.sh
	PYTHONPATH=lab $(BIN)/python bench/dhcp_flood.py $(FLOOD_ARGS)

# A mutation fuzzer over the DHCP decoder, service and encoder; a short run is part of make test.
FUZZ_SECONDS ?= 600
fuzz-dhcp: venv
	$(BIN)/python -m tests.fuzz.run_dhcp --seconds $(FUZZ_SECONDS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis .fuzz-crashes src/*.egg-info build
	find src -name '*.so' -delete
