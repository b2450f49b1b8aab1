# iommufd-harness: everything a fresh Debian 12 machine needs to run the
# harness is installed by 'make setup' (apt packages + a Python venv), which
# 'make run' calls; what the tests and the benchmark need on top by
# 'make setup-test', which 'make test', 'make test-fast' and 'make bench' call.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)

# Host tools to run: kernel build, guest image, and Debian's kernel source
# (6.12); per architecture (arches/*.toml) QEMU and, for the other
# architectures, a cross compiler.  Their guest userland comes from Debian's
# packages of that architecture, so dpkg learns it too (nothing of it is
# installed).
ARCH_FACTS = $(PYTHON) -m harness.arches
APT_PACKAGES := build-essential flex bison bc libelf-dev libssl-dev cpio rsync patch \
	xz-utils lz4 git dpkg-dev ccache linux-source-6.12 python3-venv \
	$(shell $(ARCH_FACTS) packages)
FOREIGN_ARCHES := $(shell $(ARCH_FACTS) foreign)
# On top, for the tests and the benchmark: Debian's 6.1 source (for the test
# that it is refused, as too old for iommufd); U-Boot and FAT tools for the
# QEMU lab board (qemu-images/qemu-board-arm64: 'qemu-board' and a lab's
# boot = "oneshot" name what they miss when run without them); Chromium for
# the test that renders report.html in a real browser; public-inbox for the
# archive the gate's tests fetch series from (as b4 does from lore).
APT_TEST_PACKAGES := linux-source-6.1 u-boot-qemu u-boot-tools mtools dosfstools fdisk chromium public-inbox

HARNESS_ARGS ?=
PYTEST_ARGS ?=
# make bench: the default and the lockdep+KASAN kernels, x86_64 and arm64,
# access and full suites, --compare-base with a cached base, --coverage against
# without it (on the lockdep+KASAN kernel), the QEMU lab board;
# add --cold for cold builds (long)
BENCH_ARGS ?= --profile x86_64-vtd --profile arm64-smmuv3 --debug lockdep,kasan --suite access --suite full --compare-base --edit --coverage \
	--lab-board

.PHONY: all setup setup-apt setup-venv setup-test setup-apt-test setup-venv-test run test test-fast bench clean \
	distclean help

help:
	@echo "make run        install what is needed, then build, boot and run the access tests"
	@echo "make test       unit tests plus a real end-to-end run"
	@echo "make test-fast  unit tests only (seconds)"
	@echo "make bench      the harness's build, boot and test times next to the physical floor"
	@echo "make setup      only install what make run needs (apt packages, venv)"
	@echo "make setup-test only install that and what the tests and make bench need on top"

setup: setup-apt setup-venv

setup-test: setup-apt-test setup-venv-test

# $(call apt_install,PACKAGES): the foreign architectures and the packages
# that are not installed yet
define apt_install
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) is needed (apt-get install python3)"; exit 1; }
	@update=; \
	for a in $(FOREIGN_ARCHES); do \
		dpkg --print-foreign-architectures | grep -qx $$a || { $(SUDO) dpkg --add-architecture $$a; update=1; }; \
	done; \
	ls /var/lib/apt/lists/ 2>/dev/null | grep -q '_Packages' || update=1; \
	for a in $(FOREIGN_ARCHES); do \
		ls /var/lib/apt/lists/ 2>/dev/null | grep -q "binary-$${a}_Packages" || update=1; \
	done; \
	missing=$$(for p in $(1); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; \
	done); \
	if [ -n "$$missing" ]; then update=1; fi; \
	if [ -n "$$update" ]; then $(SUDO) apt-get update -q; fi; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends $$missing; \
	fi
endef

setup-apt:
	$(call apt_install,$(APT_PACKAGES))

setup-apt-test:
	$(call apt_install,$(APT_PACKAGES) $(APT_TEST_PACKAGES))

$(BIN)/iommufd-harness: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	@touch $@

# pytest and what the tests use, labgrid (the tests' labgrid place; a lab
# with labgrid places needs it too: README, Real boards)
$(VENV)/.test-extras: $(BIN)/iommufd-harness
	$(BIN)/pip install -q -e '.[test,labgrid]'
	@touch $@

# the harness's own modules as bytecode (an editable install leaves them as
# source, and an environment with PYTHONDONTWRITEBYTECODE would compile them
# again on every start: 0.15 s of each run); only changed ones are compiled
setup-venv: $(BIN)/iommufd-harness
	@$(BIN)/python -m compileall -q harness >/dev/null

setup-venv-test: setup-venv $(VENV)/.test-extras

run: setup
	$(BIN)/iommufd-harness run $(HARNESS_ARGS)

test: setup-test
	$(BIN)/pytest $(PYTEST_ARGS)

test-fast: setup-venv-test
	$(BIN)/pytest -m "not slow and not mail" $(PYTEST_ARGS)

bench: setup-test
	$(BIN)/python -m harness.bench $(BENCH_ARGS)

clean:
	rm -rf work/results work/vm

distclean:
	rm -rf work $(VENV)
