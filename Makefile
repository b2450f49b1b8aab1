# iommufd-harness: everything a fresh Debian 12 machine needs is installed by
# 'make setup' (apt packages + a Python venv); 'make run' and 'make test' call it.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)

# Host tools: kernel build, guest image, QEMU, and Debian's kernel source.
APT_PACKAGES := build-essential flex bison bc libelf-dev libssl-dev cpio rsync patch \
	xz-utils git dpkg-dev ccache qemu-system-x86 linux-source-6.12 python3-venv

HARNESS_ARGS ?=
PYTEST_ARGS ?=

.PHONY: all setup setup-apt setup-venv run test test-fast bench clean distclean help

help:
	@echo "make run        install what is needed, then build, boot and run the access tests"
	@echo "make test       unit tests plus a real end-to-end run"
	@echo "make test-fast  unit tests only (seconds)"
	@echo "make bench      time a cold and a warm 'run'"
	@echo "make setup      only install (apt packages, venv)"

setup: setup-apt setup-venv

setup-apt:
	@missing=$$(for p in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; \
	done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		$(SUDO) apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends $$missing; \
	fi; \
	if [ -z "$$(ls /var/lib/apt/lists/ 2>/dev/null | grep -v -e lock -e partial -e auxfiles)" ]; then \
		$(SUDO) apt-get update -q; \
	fi

$(BIN)/iommufd-harness: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

setup-venv: $(BIN)/iommufd-harness

run: setup
	$(BIN)/iommufd-harness run $(HARNESS_ARGS)

test: setup
	$(BIN)/pytest $(PYTEST_ARGS)

test-fast: setup-venv
	$(BIN)/pytest -m "not slow" $(PYTEST_ARGS)

bench: setup
	$(BIN)/python -m harness.bench

clean:
	rm -rf work/results work/vm

distclean:
	rm -rf work $(VENV)
