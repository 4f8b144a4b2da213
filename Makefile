# The README's two commands: `make demo` and `make test`. Both install what they need first.
VENV ?= .venv
PYTEST_ARGS ?=

.PHONY: install test demo lint bench clean

install:
	@./scripts/install.sh

# `make test` runs the suite once, in two parts: the tests marked neither kernel nor cluster with every
# capability dropped (tests/conftest.py checks, under BPFSHARE_NO_CAPS=1, that none is left), so a test
# that needs one but lacks the kernel marker fails; then the kernel and cluster tests, as root.
# With PYTEST_ARGS set, a part that selects no test (pytest's exit status 5) is not a failure.
DROP_CAPS ?= setpriv --inh-caps=-all --ambient-caps=-all --bounding-set=-all --no-new-privs --
NONE_SELECTED_OK = $(if $(strip $(PYTEST_ARGS)),|| [ $$? -eq 5 ])

test: install lint
	BPFSHARE_NO_CAPS=1 $(DROP_CAPS) $(VENV)/bin/pytest -m "not kernel and not cluster" $(PYTEST_ARGS) $(NONE_SELECTED_OK)
	$(VENV)/bin/pytest -m "kernel or cluster" $(PYTEST_ARGS) $(NONE_SELECTED_OK)

demo: install
	$(VENV)/bin/bpfshare demo

lint:  # ruff, the formatting, and strict types: CI runs it as the first step of `make test`
	$(VENV)/bin/ruff check operator tests bench
	$(VENV)/bin/ruff format --check operator tests bench
	$(VENV)/bin/mypy --strict

bench: install
	$(VENV)/bin/python -m bench.loader --write docs/benchmarks.md
	$(VENV)/bin/python -m bench.latency --write docs/benchmarks.md
	$(VENV)/bin/python -m bench.scale_node --write docs/benchmarks.md
	$(VENV)/bin/python -m bench.scale_nodes --write docs/benchmarks.md
	$(VENV)/bin/python -m bench.idle --write docs/benchmarks.md
	$(VENV)/bin/python -m bench.pods --write docs/benchmarks.md

clean:
	$(MAKE) -C bpf clean
