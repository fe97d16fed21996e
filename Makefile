# Two commands on a fresh machine:  `make run`  and  `make test`.
# Both set everything up first (scripts/setup.sh is idempotent and cached).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup setup-test run test lint bench clean

setup:
	bash scripts/setup.sh

setup-test:
	TABSWARM_WITH_REFERENCE=1 bash scripts/setup.sh

run: setup
	$(VENV)/bin/tabswarm chat

test: setup-test
	bash scripts/test.sh

lint:
	$(VENV)/bin/ruff check coordinator protocol shards tests bench
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) node_modules data .setup-stamps
