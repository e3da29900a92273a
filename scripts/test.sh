#!/usr/bin/env bash
# Sets up everything the tests need on a fresh Debian machine, then runs them.
#   bash scripts/test.sh            the default suite (no live exchanges, no slow scenarios)
#   bash scripts/test.sh -m slow    the long fault and load scenarios
#   bash scripts/test.sh -m live    smoke tests against the real exchanges
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

python3 -m pip install -q --disable-pip-version-check -e '.[test]'
python3 -m pytest "$@"
