#!/usr/bin/env bash
# Install what the tests need and run them (the README's test command; CI runs exactly this).
# Debian's chromium drives the browser test: installed here when missing and we may use apt-get;
# elsewhere that one test skips and says why.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium) >/dev/null
fi
python3 -m venv .venv
.venv/bin/pip install -q -r requirements-dev.txt
.venv/bin/python -m pytest -q "$@"
