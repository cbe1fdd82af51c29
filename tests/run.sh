#!/usr/bin/env bash
# The project's test command: installs what the tests need on a fresh machine, then runs them offline.
set -euo pipefail
cd "$(dirname "$0")/.."
# torch first, pinned, so the requirements do not pull another build. Which build pip picks depends on the
# machine's pip configuration: a CPU wheel where one is offered (our CI offers torch-2.13.0+cpu through
# find-links), the default PyPI build otherwise (on Linux that one bundles CUDA, a few GB). For a CPU-only
# install elsewhere, set PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu before running this.
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
python -c 'import torch; print(f"torch {torch.__version__}:", "CUDA build" if torch.version.cuda else "CPU-only build")'
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# -v names each test as it starts, so long tests (servers, the browser) show where the run is; the table of the
# 25 slowest tests at the end keeps slow tests visible.
python -m pytest -v --durations=25 "$@"
