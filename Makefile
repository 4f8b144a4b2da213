# The README's two commands: `make demo` and `make test`. Both install what they need first.
VENV ?= .venv
PYTEST_ARGS ?=

.PHONY: install test demo lint bench clean

install:
	@./scripts/install.sh

test: install
	$(VENV)/bin/ruff check operator tests bench
	$(VENV)/bin/pytest $(PYTEST_ARGS)

demo: install
	$(VENV)/bin/bpfshare demo

lint:
	$(VENV)/bin/ruff check operator tests bench
	$(VENV)/bin/ruff format --check operator tests bench
	$(VENV)/bin/mypy --strict

bench: install
	$(VENV)/bin/python bench/loader.py --write docs/benchmarks.md
	$(VENV)/bin/python bench/latency.py --write docs/benchmarks.md
	$(VENV)/bin/python bench/scale_node.py --write docs/benchmarks.md
	$(VENV)/bin/python bench/scale_nodes.py --write docs/benchmarks.md
	$(VENV)/bin/python bench/idle.py --write docs/benchmarks.md

clean:
	$(MAKE) -C bpf clean
