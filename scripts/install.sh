#!/usr/bin/env bash
# Installs forwardauth into ./.venv. With --test, also everything the tests
# need: Python test packages, Debian packages (nginx, redis-server,
# redis-sentinel, chromium, wrk) when missing, and the npm packages of the
# test OpenID provider.
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
[ "${1:-}" = "--test" ] && want_test=1

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/pip install -q --upgrade pip >/dev/null
if [ "$want_test" = 1 ]; then
  .venv/bin/pip install -q -e '.[test]'
else
  .venv/bin/pip install -q -e .
fi

if [ "$want_test" = 1 ]; then
  missing=()
  command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
  command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
  command -v redis-sentinel >/dev/null 2>&1 || missing+=(redis-sentinel)
  [ -x /usr/bin/chromium ] || missing+=(chromium)
  command -v wrk >/dev/null 2>&1 || missing+=(wrk)
  if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
  fi
  # Debian starts these services on install; the tests start their own.
  systemctl disable --now nginx redis-server redis-sentinel >/dev/null 2>&1 || true
  if [ -f tests/oidc_provider/package.json ]; then
    (cd tests/oidc_provider && npm ci --no-audit --no-fund --loglevel=error)
  fi
fi
