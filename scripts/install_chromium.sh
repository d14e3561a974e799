#!/usr/bin/env bash
# Chromium from Debian for the report test (tests/workflow/test_report.py); needs root.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "install_chromium.sh: root is needed to apt-get install chromium" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq --no-install-recommends chromium >/tmp/chromium-apt.log 2>&1 || {
  apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium >>/tmp/chromium-apt.log 2>&1
} || { tail -20 /tmp/chromium-apt.log >&2; exit 1; }
command -v chromium
