#!/usr/bin/env bash
# The project's test command: installs what the tests need on a fresh machine, then runs them offline.
set -euo pipefail
cd "$(dirname "$0")/.."
# The CPU wheel of torch first, so the requirements do not pull the CUDA build.
python -m pip install --quiet --disable-pip-version-check torch==2.13.0
python -m pip install --quiet --disable-pip-version-check -r requirements.txt -r requirements-dev.txt
# The browser test drives Debian's Chromium (never a downloaded browser).
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
  else
    echo "note: /usr/bin/chromium is missing and this is not root; the browser test will be skipped" >&2
  fi
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
python -m pytest "$@"
