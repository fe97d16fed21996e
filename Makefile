# Two commands on a fresh machine:  `make run`  and  `make test`.
# Both set everything up first (scripts/setup.sh is idempotent and cached).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup setup-test run chat test lint bench clean

setup:
	bash scripts/setup.sh

setup-test:
	TABSWARM_WITH_REFERENCE=1 bash scripts/setup.sh

# The main job: the coordinator on the default model with two headless Chromium worker
# tabs; open the printed URL to chat, or point other browsers at /worker/ to add nodes.
run: setup
	$(VENV)/bin/tabswarm serve --headless-workers 2

chat: setup
	$(VENV)/bin/tabswarm chat

test: setup-test
	bash scripts/test.sh

lint:
	$(VENV)/bin/ruff check coordinator protocol shards tests bench
	$(VENV)/bin/mypy

# This machine's speed next to llama.cpp on the same GGUF (the README's performance table).
bench: setup
	$(VENV)/bin/tabswarm bench

clean:
	rm -rf $(VENV) node_modules data .setup-stamps
