# fabcelery: `make demo` deploys the example project to a local test server,
# `make test` runs every test. Both set up what they need (virtualenv, podman,
# test-host images) on a fresh Debian machine, as root.

# Debian's own Python when there is one: what servers and most users run, and built
# with optimizations (PGO, LTO) that make `fab` start faster than a plain source build.
PYTHON ?= $(shell test -x /usr/bin/python3 && echo /usr/bin/python3 || echo python3)
VENV   := .venv
PY     := $(VENV)/bin/python
FAB    := $(VENV)/bin/fab
SUITES ?= bookworm trixie
# Test modules run side by side, each on one worker with its own test hosts (tests/conftest.py):
# most of an integration test's time is spent waiting (apt, pip, a warm shutdown), not on the CPU
TEST_WORKERS ?= 4
PYTEST_PARALLEL := -n $(TEST_WORKERS) --no-loadscope-reorder

.PHONY: demo demo-down test unit integration durations lint shellcheck venv testhosts bench clean

# Quiet: pip's own output only on a failure. compat: a plain path in a .pth file (the default
# editable finder costs every start ~25 ms), without setuptools' notice that it is transitional.
$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -m venv --help >/dev/null 2>&1 && $(PYTHON) -c 'import ensurepip' 2>/dev/null \
	  || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null)
	@echo "make venv: $(VENV) with fabcelery (editable) and its test tools"
	@$(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	@PYTHONWARNINGS='ignore:Compat editable installs' \
	  $(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]' --config-settings editable_mode=compat
	@touch $@

venv: $(VENV)/.installed

testhosts:
	bash testhost/setup.sh $(SUITES)

demo: venv
	bash testhost/setup.sh trixie
	$(PY) examples/demo.py

demo-down: venv
	$(PY) -m testhost down --state-dir .demo

unit: venv
	$(PY) -m pytest tests/unit -q

integration: venv testhosts
	$(PY) -m pytest tests/integration -v $(PYTEST_PARALLEL)

# The scheduler's seconds per work unit (tests/conftest.py) from a real run of the
# integration tests, as `make test` runs them: rewrites tests/durations.json
durations: venv testhosts
	$(PY) -m pytest tests/integration -v $(PYTEST_PARALLEL) --write-durations tests/durations.json

test: venv testhosts shellcheck
	$(VENV)/bin/ruff check tasks tests testhost examples bench fabfile.py fabcelery.py
	$(PY) -m pytest tests -v -ra $(PYTEST_PARALLEL)

lint: venv shellcheck
	$(VENV)/bin/ruff check tasks tests testhost examples bench fabfile.py fabcelery.py

# The programs the servers run with /bin/sh (dash on Debian): POSIX sh only (tasks/scripts/.shellcheckrc)
shellcheck:
	@command -v shellcheck >/dev/null 2>&1 \
	  || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq shellcheck >/dev/null)
	shellcheck -s sh tasks/scripts/*.sh

# fabcelery beside Ansible and pyinfra (bench/compare/) on 1, 4 and 8 local test servers,
# and first deploys of fresh ones; ~25 min. Writes bench/RESULTS.md. A quick try:
# make bench BENCH_ARGS="--runs 1 --sizes 1,2"
# At scale (its own section of bench/RESULTS.md): make bench BENCH_ARGS="--scale 100 --runs 3"
# Across a WAN (one host, 50 ms round trip through bench/delay_proxy.py): make bench BENCH_ARGS="--rtt 50"
BENCH_ARGS ?=
bench: venv
	bash testhost/setup.sh trixie
	$(PY) bench/bench.py --write bench/RESULTS.md $(BENCH_ARGS)

clean:
	-$(PY) -m testhost down --state-dir .demo
	rm -rf $(VENV) .pytest_cache .ruff_cache
