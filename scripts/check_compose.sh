#!/usr/bin/env bash
# Proves docker-compose.yml on this machine, outside CI: builds the image, starts both
# services (the coordinator, and headless Chromium worker tabs in a second container that
# join it over the compose network with the join secret), waits until the swarm serves,
# sends a chat completion from outside the containers with the API key, reads /metrics,
# and tears everything down. Needs a running Docker engine and docker-compose (or the
# compose plugin). Where Docker Hub cannot be reached, the base image is built from
# Debian's own packages with debootstrap (TABSWARM_BASE_IMAGE names it).
# Usage: bash scripts/check_compose.sh   (writes bench/results/compose_check.json)
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf '\033[1m[compose-check]\033[0m %s\n' "$*"; }
if docker compose version >/dev/null 2>&1; then COMPOSE=(docker compose); else COMPOSE=(docker-compose); fi
export TABSWARM_JOIN_SECRET=compose-check-join TABSWARM_API_KEYS=compose-check-key TABS=2
PROJECT=tabswarmcheck
started=$(date +%s)

if [ -z "${TABSWARM_BASE_IMAGE:-}" ]; then
  if timeout 60 docker pull -q python:3.11-slim-bookworm >/dev/null 2>&1; then
    export TABSWARM_BASE_IMAGE=python:3.11-slim-bookworm
  else
    export TABSWARM_BASE_IMAGE=tabswarm-base:bookworm
    if ! docker image inspect "$TABSWARM_BASE_IMAGE" >/dev/null 2>&1; then
      say "Docker Hub unreachable: building $TABSWARM_BASE_IMAGE from Debian packages (debootstrap)"
      root=$(mktemp -d)
      debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
        bookworm "$root" http://deb.debian.org/debian >/dev/null
      tar -C "$root" -c . | docker import - "$TABSWARM_BASE_IMAGE" >/dev/null
      rm -rf "$root"
    fi
  fi
fi
say "base image: $TABSWARM_BASE_IMAGE"
# this machine's extra CAs (a TLS-intercepting proxy), for the build's downloads
cp /usr/local/share/ca-certificates/*.crt docker/extra-ca/ 2>/dev/null || true
cleanup() { "${COMPOSE[@]}" -p "$PROJECT" down -t 5 >/dev/null 2>&1 || true; }
trap cleanup EXIT
build_started=$(date +%s)
"${COMPOSE[@]}" -p "$PROJECT" build
build_seconds=$(( $(date +%s) - build_started ))
"${COMPOSE[@]}" -p "$PROJECT" up -d
say "waiting for the swarm (2 tabs in the workers container)"
ready=""
for _ in $(seq 1 180); do
  if curl -fsS http://127.0.0.1:8471/health 2>/dev/null | grep -q '"ready": true'; then ready=yes; break; fi
  sleep 2
done
if [ -z "$ready" ]; then
  "${COMPOSE[@]}" -p "$PROJECT" logs --tail 80
  echo "compose-check: the swarm never became ready" >&2
  exit 1
fi
unauthorised=$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:8471/v1/models)
work=$(mktemp -d)
curl -fsS http://127.0.0.1:8471/v1/chat/completions -H "Authorization: Bearer $TABSWARM_API_KEYS" \
  -H 'Content-Type: application/json' -o "$work/answer.json" \
  -d '{"messages":[{"role":"user","content":"What is the capital of France?"}],"max_tokens":16}'
curl -fsS http://127.0.0.1:8471/metrics -H "Authorization: Bearer $TABSWARM_API_KEYS" -o "$work/metrics.txt"
python3 - "$work" "$TABSWARM_BASE_IMAGE" "$build_seconds" "$(( $(date +%s) - started ))" "$unauthorised" <<'PY'
import json, sys
work, base, build_seconds, total_seconds, unauthorised = sys.argv[1:]
answer = json.load(open(f"{work}/answer.json"))
content = answer["choices"][0]["message"]["content"]
assert content.strip(), answer
assert answer["usage"]["tabswarm"]["stages"] == 2, answer["usage"]
metrics = [line for line in open(f"{work}/metrics.txt").read().splitlines()
           if line.startswith(("tabswarm_workers{", "tabswarm_requests_total{"))]
result = {"verified": True, "base_image": base, "build_seconds": int(build_seconds),
          "seconds_to_answer": int(total_seconds), "unauthenticated_status": int(unauthorised),
          "answer": content, "stages": answer["usage"]["tabswarm"]["stages"], "metrics": metrics}
json.dump(result, open("bench/results/compose_check.json", "w"), indent=1)
print(json.dumps(result, indent=1))
PY
[ "$unauthorised" = 401 ] || { echo "compose-check: the API answered without a key ($unauthorised)" >&2; exit 1; }
say "verified: build, both services, a 2-tab answer from outside the containers, /metrics"
