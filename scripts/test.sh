#!/usr/bin/env bash
# Runs every test level: pytest (unit, integration, e2e with real Chromium) and the
# JavaScript codec tests (node --test). pytest's "no tests collected" (exit 5) is a failure here.
set -uo pipefail
cd "$(dirname "$0")/.."
VENV=${TABSWARM_VENV:-.venv}
status=0
"$VENV/bin/python" -m pytest -q -rs "$@"
code=$?
if [ $code -eq 5 ]; then echo "pytest collected no tests: treating as failure"; status=1;
elif [ $code -ne 0 ]; then status=$code; fi
if compgen -G "worker_web/tests/*.test.mjs" >/dev/null; then
  node --test worker_web/tests/ || status=1
fi
exit $status
